"""The demo page's HTTP server: the static page, the bundled sample photos, and /api/classify.

Routes (all on 127.0.0.1 by default):
  GET  /                     the page (demo/static/index.html: no build step, no external assets)
  GET  /api/model            the model's name, version, signature (from its metadata), labels, top-k
  GET  /api/samples          the bundled sample photos' names
  GET  /api/samples/<name>   one sample photo (JPEG)
  POST /api/classify         body: the raw bytes of a JPEG or PNG; answers both protocols' results, side by side

Every failure is a JSON {"error": "..."} with a status a page can show: 400 not an image, 413 too large,
502 model down. An upload is checked here before the model sees it, so a text file never reaches the server.
"""
from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence

from demo.client import ModelClient, ModelDown
from exporter.images import bundled_photos, encode, resize
from spec.resources import package_dir

STATIC = package_dir("demo") / "static"  # package data
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
SAMPLE_SIDE = 640  # sample photos are sent at most this wide/high, as a user's camera photo would be resized
DISCARD_LIMIT = 64 << 20  # a refused upload is read (and dropped) up to this, so its sender sees the 413
DISCARD_TIMEOUT_S = 5.0


class BadUpload(Exception):
    """The upload is not something the model can take; the message says what it is and what to do."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DemoConfig:
    model: str
    labels: tuple[str, ...]
    top_k: int
    max_upload_bytes: int
    deploy_hint: str  # what to run when the model is down
    expects: str = ""  # what the export's tensor input expects (size, preprocessing, value range)


def inspect_upload(body: bytes, limit: int) -> dict:
    """Format and size of an uploaded image, or BadUpload saying why it cannot be classified."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadUpload("the upload is empty: choose a JPEG or PNG image")
    if len(body) > limit:
        raise BadUpload(f"the image is {len(body) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB "
                        "(--max-upload-mb): choose a smaller image", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    try:
        image = Image.open(io.BytesIO(body))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        for magic, kind in MAGIC.items():
            if body.startswith(magic):
                raise BadUpload(f"this {kind} file is damaged and cannot be decoded ({exc}); choose another photo") \
                    from None
        start = body[:8]
        looks = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in start) else "binary data"
        raise BadUpload(f"this is not a JPEG or PNG image (it starts with {looks}: {start!r}); "
                        "choose a .jpg or .png photo") from None
    kind, size = image.format, image.size
    try:
        image.load()  # decodes every pixel: a truncated or damaged file fails here, not in the model
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadUpload(f"this {kind} file is damaged and cannot be decoded ({exc}); choose another photo") from None
    finally:
        image.close()
    if kind not in ("JPEG", "PNG"):
        raise BadUpload(f"this is a {kind} image; the model's signature decodes JPEG and PNG only: "
                        "convert it, or choose another photo", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    return {"format": kind, "width": size[0], "height": size[1], "bytes": len(body)}


class Samples:
    """The photos bundled with scikit-image and scikit-learn, JPEG-encoded once, on first use."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jpegs: Optional[dict[str, bytes]] = None

    def _load(self) -> dict[str, bytes]:
        with self._lock:
            if self._jpegs is None:

                jpegs = {}
                for name, photo in bundled_photos():
                    height, width = photo.shape[:2]
                    scale = min(1.0, SAMPLE_SIDE / max(height, width))
                    if scale < 1.0:
                        photo = resize(photo, round(width * scale), round(height * scale))
                    jpegs[name] = encode(photo, "jpeg", 90)
                self._jpegs = jpegs
            return self._jpegs

    def names(self) -> list[str]:
        return list(self._load())

    def get(self, name: str) -> Optional[bytes]:
        return self._load().get(name)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], client: ModelClient, config: DemoConfig):
        super().__init__(address, DemoHandler)
        self.client, self.config, self.samples = client, config, Samples()


class DemoHandler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # quiet: the page shows what happened

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif path == "/api/model":
            config = self.server.config
            try:
                meta = self.server.client.metadata()
            except ModelDown as exc:
                self._json(502, {"error": f"{exc}. {config.deploy_hint}"})
                return
            self._json(200, {**meta, "labels": list(config.labels), "top_k": config.top_k,
                             "max_upload_bytes": config.max_upload_bytes, "expects": config.expects})
        elif path == "/api/samples":
            self._json(200, {"samples": self.server.samples.names()})
        elif path.startswith("/api/samples/"):
            jpeg = self.server.samples.get(path.rsplit("/", 1)[1])
            if jpeg is None:
                self._json(404, {"error": f"no sample photo {path.rsplit('/', 1)[1]!r}"})
            else:
                self._send(200, jpeg, "image/jpeg")
        else:
            self._json(404, {"error": f"no page {path}"})

    def _discard(self, length: int) -> None:
        """Read and drop a refused upload's body (up to DISCARD_LIMIT, for a few seconds): a client (a browser, urllib)
        sends its whole body before it reads the answer, and a socket closed under it is a broken pipe there
        instead of the 413 this page shows. Nothing is kept."""
        left = min(length, DISCARD_LIMIT)
        try:
            self.connection.settimeout(DISCARD_TIMEOUT_S)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/api/classify":
            self._json(404, {"error": f"no endpoint {self.path}"})
            return
        config = self.server.config
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._json(400, {"error": "Content-Length is not a number"})
            return
        if length > config.max_upload_bytes:  # refuse before reading it all
            self.close_connection = True
            self._json(413, {"error": f"the image is {length / 1e6:.1f} MB; the limit is "
                                      f"{config.max_upload_bytes / 1e6:.1f} MB (--max-upload-mb): choose a smaller image"})
            self._discard(length)
            return
        body = self.rfile.read(length) if length else b""
        try:
            image = inspect_upload(body, config.max_upload_bytes)
            answers = classify(self.server.client, body, config.labels, config.top_k)
        except BadUpload as exc:
            self._json(exc.status, {"error": str(exc)})
            return
        except ModelDown as exc:
            self._json(502, {"error": f"{exc}. {config.deploy_hint}"})
            return
        self._json(200, {"image": image, "model": config.model, "results": [a.as_json() for a in answers]})


def classify(client: ModelClient, image: bytes, labels: Sequence[str], k: int) -> list:
    """The image over REST (b64) and gRPC (bytes); each answer carries its own latency or error."""
    return [client.predict_rest(image, labels, k), client.predict_grpc(image, labels, k)]
