"""A counting, fault-injecting HTTP proxy in front of the KMS emulator.

Tests put it between kmsfs and moto to count KMS calls per operation and to
inject the failures a real fleet meets: throttling, 5xx, connection resets,
slow answers. Faults are scheduled per request by a policy function.

`quota` (a TokenBucket) makes it behave like KMS's request quota: calls of
the metered operations beyond the bucket's rate (after its burst) are
answered 400 ThrottlingException "Rate exceeded", as KMS answers them.
"""
import contextlib
import http.client
import http.server
import socket
import socketserver
import threading
import time


class Fault:
    NONE = None
    THROTTLE = "throttle"      # 400 ThrottlingException
    UNAVAILABLE = "503"        # 503 with a JSON error body
    RESET = "reset"            # close the connection without answering
    SLOW = "slow"              # answer after `delay` seconds
    QUOTA = "quota"            # 400 ThrottlingException "Rate exceeded" (the quota's answer)


class TokenBucket:
    """A request quota: `rate` tokens a second, at most `burst` saved up;
    each metered call takes one or is throttled. Thread-safe through the
    proxy's lock (take() is called under it)."""

    def __init__(self, rate, burst, operations=("TrentService.Decrypt",), clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.operations = set(operations)
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.throttled = 0
        self.granted = 0

    def take(self, target):
        if target not in self.operations:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.granted += 1
            return True
        self.throttled += 1
        return False


class KMSProxy:
    def __init__(self, upstream_port, host="127.0.0.1", tls_context=None):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.counts = {}
        self.requests = []
        self.policy = lambda n, target: None   # (request number, target) -> fault
        self.delay = 2.0
        self.connections = 0                    # TCP connections accepted (connection reuse)
        self.body_policy = None                 # optional (n, target, body) -> fault; wins over policy
        self.quota = None                       # optional TokenBucket, applied before any fault
        self.statuses = {}                      # target -> {HTTP status of the answer: count}
        self.undelivered = 0                    # answers the client had hung up before (its attempt timed out)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without this, Nagle
            # and delayed ACKs add ~40 ms to every proxied call.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with proxy.lock:
                    proxy.connections += 1

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                target = self.headers.get("X-Amz-Target", "")
                with proxy.lock:
                    n = len(proxy.requests)
                    proxy.requests.append(target)
                    fault = proxy.body_policy(n, target, body) if proxy.body_policy else proxy.policy(n, target)
                    if fault is None and proxy.quota is not None and not proxy.quota.take(target):
                        fault = Fault.QUOTA
                    if fault in (None, Fault.SLOW):
                        proxy.counts[target] = proxy.counts.get(target, 0) + 1
                if fault == Fault.RESET:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault in (Fault.THROTTLE, Fault.UNAVAILABLE, Fault.QUOTA):
                    status = 503 if fault == Fault.UNAVAILABLE else 400
                    code = "ServiceUnavailableException" if fault == Fault.UNAVAILABLE else "ThrottlingException"
                    message = "Rate exceeded" if fault == Fault.QUOTA else "injected by test proxy"
                    payload = ('{"__type":"%s","message":"%s"}' % (code, message)).encode()
                    proxy._answered(target, status)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == Fault.SLOW:
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                try:
                    conn.request("POST", self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    # The emulator is gone (the suite's end, with a daemon
                    # still retrying): answer as a proxy does, not with a
                    # traceback in the test output.
                    conn.close()
                    proxy._answered(target, 502)
                    with contextlib.suppress(OSError):
                        self.send_error(502, "upstream KMS unreachable")
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up on this attempt (its timeout) before
                    # the answer came: KMS did the work, nobody got it.
                    with proxy.lock:
                        proxy.undelivered += 1
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                proxy._answered(target, resp.status)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        if tls_context is not None:
            # Terminate TLS here: kmsfs talks https to the proxy, which
            # forwards plain http to the emulator.
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
        self.url = "%s://%s:%d" % ("https" if tls_context else "http", host, self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _answered(self, target, status):
        with self.lock:
            by = self.statuses.setdefault(target, {})
            by[status] = by.get(status, 0) + 1

    def answered(self, operation, status=200):
        """Calls of `operation` answered with `status` (200: served)."""
        with self.lock:
            return self.statuses.get("TrentService." + operation, {}).get(status, 0)

    def count(self, operation):
        with self.lock:
            return self.counts.get("TrentService." + operation, 0)

    def reset(self):
        with self.lock:
            self.counts.clear()
            self.requests.clear()
            self.connections = 0
            self.statuses.clear()
            self.undelivered = 0
            self.quota = None
            self.policy = lambda n, target: None
            self.body_policy = None

    def close(self):
        self.server.shutdown()
        self.server.server_close()
