"""nginx serving MTA-STS policy files over HTTPS, and what a policy host needs (its
certificate, the policy text): shared by test_mta_sts.py and the DANE/MTA-STS network of
dane_net.py, so that neither imports a test file."""

from __future__ import annotations

import os
from pathlib import Path

from interop.peers import Process, _openssl, require_tool, tcp_open

NGINX = "127.0.31.1"
# Policy domains served by nginx with the CA-issued certificate.
SERVED = ("enforce.test", "nomatch.test", "notls.test", "testing.test", "fetchfail.test",
          "redirect.test", "mediatype.test", "rotate.test")


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in
                   [("version", "STSv1"), ("mode", mode), *(("mx", m) for m in mx),
                    ("max_age", max_age)])


def make_multi_name_cert(directory: Path, names: list[str], ca: tuple[Path, Path]
                         ) -> tuple[Path, Path]:
    """One server certificate for every name in names (SAN), issued by ca; (chain, key)."""
    ca_cert, ca_key = ca
    key, csr = directory / "policy-hosts.key", directory / "policy-hosts.csr"
    leaf, chain = directory / "policy-hosts.crt", directory / "policy-hosts.chain.pem"
    ext = directory / "policy-hosts.ext"
    ext.write_text("subjectAltName = " + ", ".join(f"DNS:{n}" for n in names) + "\n"
                   "basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=mta-sts hosts",
             what="req -new (policy hosts)")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext),
             "-out", str(leaf), what="x509 -req (policy hosts)")
    chain.write_bytes(leaf.read_bytes() + ca_cert.read_bytes())
    return chain, key


def nginx_main(base: Path) -> str:
    """The main context of a test nginx's configuration: one worker, in the foreground,
    its pid file and error log under base."""
    return (f"worker_processes 1;\npid {base}/nginx.pid;\ndaemon off;\n"
            f"error_log {base}/error.log info;\nevents {{ worker_connections 64; }}")


class Nginx(Process):
    """nginx serving <www>/<host>/.well-known/mta-sts.txt over HTTPS on NGINX:port, every
    request logged to access.log as `host status uri`."""

    def __init__(self, base: Path, port: int, chain: Path, key: Path,
                 self_signed: tuple | None = None, host: str = NGINX,
                 served: list[str] | None = None):
        """served: the policy hosts served with chain/key (default: those of SERVED); the
        redirect, media-type and self-signed (self_signed) hosts of this file only with
        self_signed."""
        self.base = base
        self.port = port
        self.host = host
        self.www = base / "www"
        self.access_log = base / "access.log"
        (base / "tmp").mkdir(parents=True, exist_ok=True)
        self.www.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        os.chmod(self.www, 0o755)
        temp = "".join(f"    {k}_temp_path {base}/tmp;\n"
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        if served is None:
            served = [f"mta-sts.{d}" for d in SERVED if d not in
                      ("redirect.test", "mediatype.test")]
        tls = f"ssl_certificate {chain};\n        ssl_certificate_key {key};"
        listen = f"listen {host}:{port} ssl;"
        conf = f"""\
{nginx_main(base)}
http {{
{temp}    log_format hosts '$host $status $request_uri';
    access_log {self.access_log} hosts;
    types {{ text/plain txt; }}
    default_type application/octet-stream;
    server {{
        {listen}
        server_name {" ".join(served)};
        {tls}
        root {self.www}/$host;
    }}
{self._special_servers(listen, tls, self_signed) if self_signed else ""}}}
"""
        self.conf = base / "nginx.conf"
        self.conf.write_text(conf)
        super().__init__([require_tool("nginx"), "-p", str(base), "-e", str(base / "error.log"),
                          "-c", str(self.conf)], base / "nginx.out", "nginx")

    def _special_servers(self, listen: str, tls: str, self_signed: tuple) -> str:
        """A redirect, a policy served as text/html, a self-signed policy host."""
        return f"""\
    server {{
        {listen}
        server_name mta-sts.redirect.test;
        {tls}
        return 301 https://mta-sts.enforce.test:{self.port}/redirect-target/mta-sts.txt;
    }}
    server {{
        {listen}
        server_name mta-sts.mediatype.test;
        {tls}
        root {self.www}/$host;
        types {{ text/html txt; }}
    }}
    server {{
        {listen}
        server_name mta-sts.webpki.test;
        ssl_certificate {self_signed[0]};
        ssl_certificate_key {self_signed[1]};
        root {self.www}/$host;
    }}
"""

    def serve(self, host: str, text: str | None, path: str = ".well-known/mta-sts.txt"):
        """Puts text at https://host/path (None: removes it, so nginx answers 404)."""
        f = self.www / host / path
        if text is None:
            f.unlink(missing_ok=True)
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        for d in (self.www / host, f.parent):
            os.chmod(d, 0o755)
        f.write_text(text)
        os.chmod(f, 0o644)

    def requests(self, host: str) -> list[str]:
        try:
            lines = self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [l for l in lines if l.startswith(f"{host} ")]

    def start(self, timeout: float = 20):
        return super().start(lambda: tcp_open(self.host, self.port), timeout)
