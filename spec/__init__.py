"""The spec every part reads: its schema and loader (file:line errors), the serving contract, the error base."""
