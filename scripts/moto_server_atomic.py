"""moto's S3 API server (`moto_server`, same arguments) with atomic conditional writes.

Real S3 makes a PUT with `If-None-Match: *` or `If-Match` atomic: of concurrent conditional
creates of one key exactly one succeeds. moto checks the condition and stores the object in
two steps without a lock (`S3Response._key_response_put`), so under concurrency two creates
of one key can both succeed. The ledger's stores refuse a store that does that (the
conditional-create self-test, `ledger/src/store.rs`), and `reward_dedup` failed on it in CI
("2 of 32 concurrent creates of one key succeeded"). This wrapper serializes conditional
PUTs, whole request to whole response, so the test server behaves as S3 does; every other
request runs concurrently as before. scripts/setup-test-deps.sh installs it as the
`moto_server` the tests start.
"""

import sys
import threading

import moto.server as server

_conditional_put = threading.Lock()
_run_simple = server.run_simple


def _atomic_conditional_puts(app):
    def wrapped(environ, start_response):
        conditional = environ.get("REQUEST_METHOD") == "PUT" and (
            "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ
        )
        if not conditional:
            return app(environ, start_response)
        with _conditional_put:
            result = app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return [body]

    return wrapped


def _run_simple_atomic(host, port, app, **kwargs):
    return _run_simple(host, port, _atomic_conditional_puts(app), **kwargs)


server.run_simple = _run_simple_atomic

if __name__ == "__main__":
    sys.exit(server.main())
