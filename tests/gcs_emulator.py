"""A local Google Cloud Storage for tests: gcp-storage-emulator in a thread, with the
environment that points gcsfs, TensorStore (orbax), ArrayRecord and google-cloud-storage
(tensorboardX) at it instead of storage.googleapis.com."""

import http.server
import re
import socket
import threading
import types

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.handlers import objects


def _as_gcs_downloads(download):
    """Two things GCS does on a download that the emulator does not: answer `Range: bytes=-N`
    (the last N bytes: ArrayRecord reads a file's footer so) with those bytes, not the whole
    object, and name the object's generation in `x-goog-generation` (TensorStore, so orbax,
    needs it for its conditional writes)."""
    def handler(request, response, storage, *args, **kwargs):
        bucket, name = request.params["bucket_name"], request.params["object_id"]
        suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", request.get_header("range", "") or "")
        if suffix:
            size = len(storage.get_file(bucket, name))
            request._request_handler.headers.replace_header(
                "Range", f"bytes={max(0, size - int(suffix.group(1)))}-")
        result = download(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(bucket, name)
        except Exception:  # noqa: BLE001 - absent: the download answered 404 already
            return result
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return result
    handler.patched = True
    return handler


_lock = threading.RLock()


def _patch_downloads():
    with _lock:
        if getattr(objects.download, "patched", False):
            return
        original = objects.download
        objects.download = _as_gcs_downloads(original)  # objects.get calls it by name
        for _, methods in emulator.HANDLERS:
            for method, handler in methods.items():
                if handler is original:
                    methods[method] = objects.download


class _Threaded(http.server.ThreadingHTTPServer):
    """One thread per connection: TensorStore and gcsfs open several at once, and the
    emulator's one-at-a-time server resets them (each reset costs a client retry's back-off)."""
    daemon_threads = True


def _one_at_a_time(handle):
    """Requests are served on many connections but handled one at a time: the emulator's
    storage is not thread-safe (a listing during a delete fails)."""
    def serialized(self, method):
        with _lock:
            return handle(self, method)
    serialized.patched = True
    return serialized


def start(bucket="bucket"):
    """(server, env): an in-memory emulator holding `bucket`, and the variables to set."""
    _patch_downloads()
    emulator.server = types.SimpleNamespace(HTTPServer=_Threaded)  # the module's `http.server`
    if not getattr(emulator.Router.handle, "patched", False):
        emulator.Router.handle = _one_at_a_time(emulator.Router.handle)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url,             # gcsfs, google-cloud-storage
           "TENSORSTORE_GCS_HTTP_URL": url,          # orbax's array writes
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TensorStore without credentials
           "CLOUD_STORAGE_EMULATOR_ENDPOINT": url}   # ArrayRecord's gs:// reader
    return server, env
