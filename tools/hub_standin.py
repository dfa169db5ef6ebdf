"""A loopback stand-in for the Hugging Face hub, for offline checks of the download path.

It answers what `huggingface_hub.hf_hub_download` asks of the real hub:
`HEAD|GET /{repo_id}/resolve/{revision}/{filename}` with `X-Repo-Commit`, `ETag` and
`Content-Length`, served from `ROOT/{repo_id}/{filename}`. Point the real code at it with
`HF_ENDPOINT=http://127.0.0.1:PORT`: nothing in the package knows it is talking to a stand-in.

    python tools/hub_standin.py ROOT --port-file FILE   # prints the port into FILE, serves until killed
    python tools/hub_standin.py ROOT --populate          # ROOT gets timm/gcvit_xxtiny.in1k/model.safetensors

`--populate` writes a gcvit_xxtiny checkpoint in timm's layout with seeded random weights
(made by the installed gcvit_nb): the hub's real weights cannot be downloaded here.
"""
import argparse
import hashlib
import http.server
import os
import sys
from pathlib import Path

COMMIT = "0" * 40


class HubHandler(http.server.BaseHTTPRequestHandler):
    root: Path

    def _file(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
        path = (self.root / repo_id / filename).resolve()
        inside = str(path).startswith(str(self.root.resolve()) + os.sep)
        return path if inside and path.is_file() else None

    def _headers(self, path: Path):
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        return data

    def do_HEAD(self):
        path = self._file()
        if path is None:
            self.send_error(404, "Entry not found")
            return
        self._headers(path)

    def do_GET(self):
        path = self._file()
        if path is None:
            self.send_error(404, "Entry not found")
            return
        self.wfile.write(self._headers(path))

    def log_message(self, format, *args):
        pass


def populate(root: Path) -> Path:
    "Write a seeded random gcvit_xxtiny checkpoint (timm layout) where the hub keeps it."
    import keras
    from safetensors.numpy import save_file
    from gcvit_nb.checkpoints import timm_state_dict
    from gcvit_nb.model import GCViT
    keras.utils.set_random_seed(0)
    target = root / "timm" / "gcvit_xxtiny.in1k" / "model.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(timm_state_dict(GCViT.from_variant("gcvit_xxtiny")), str(target))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--port-file", type=Path, help="write the port here once serving")
    parser.add_argument("--populate", action="store_true",
                        help="write the gcvit_xxtiny checkpoint into ROOT and exit")
    args = parser.parse_args(argv)
    if args.populate:
        print(populate(args.root))
        return 0
    HubHandler.root = args.root
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        tmp.replace(args.port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
