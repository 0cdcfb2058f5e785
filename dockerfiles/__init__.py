"""The Dockerfiles, serve.sh and the embedded image's requirements: package data that deploy/images.py copies into
each model image's build context (a package only so that importlib.resources can find them once installed)."""
