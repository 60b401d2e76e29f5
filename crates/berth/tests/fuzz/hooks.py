"""schemathesis hooks of berth's API fuzzer (tests/fuzz_api.rs).

Every operation is fuzzed, those that pull images and start containers
included. For them to reach berth's lifecycle without leaving loopback:

- a template the fuzzer writes gets the test image of the loopback
  registry (``BERTH_TEST_IMAGE``) whatever image it generated, a tag that
  is there for three cases in four (the fourth keeps the generated tag: a
  tag the registry does not have, 422 ``image_pull_failed``), the image's
  port, and a health check and stop grace the image can meet, so that a
  start ends in seconds;
- a template name or runtime id the fuzzer generated is replaced, for one
  case in two, by the template (``FUZZ_TEMPLATE``) and a runtime the test
  made (``FUZZ_RUNTIME``) or the hooks started, so that starts, restarts,
  stops, pins and readiness meet something that exists; one start in four
  (at most ``FRESH_LIMIT``) gets a fresh id, so that it starts a container.

The choices hash the generated value, so a seed replays the same run.
Everything else is left as generated: the fuzzer still sends every shape
of bad input to every operation.
"""

import os
import zlib

import schemathesis

IMAGE = os.environ["BERTH_TEST_IMAGE"]
TEMPLATE = os.environ["FUZZ_TEMPLATE"]
RUNTIME = os.environ["FUZZ_RUNTIME"]
TAGS = ("v1", "v2", "latest")


def pick(value, n):
    """A stable choice among n for a generated value."""
    return zlib.crc32(repr(value).encode()) % n


def runnable(body):
    body["image"] = IMAGE
    which = pick(body.get("tag"), 4)
    if which < len(TAGS):
        body["tag"] = TAGS[which]
    body["port"] = 8080
    if "health" in body:
        body["health"] = {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "10s"}
    body["stop_grace"] = "1s"
    # A command of the fuzzer's own inside the container only times out.
    body.pop("store_validator", None)


# Runtimes the hooks start under fresh ids, at most this many in a run.
FRESH_LIMIT = 20
fresh = []


def runtime_for(value):
    """The test's runtime or one the hooks started, for a generated id."""
    choices = [RUNTIME] + fresh
    return choices[pick(value, len(choices))]


def names_template(method, path, body):
    """Whether a generated template name may become the test's template:
    reads, and pin changes that leave it startable (a verified promote is
    looked up and refused when the digest is absent; unpin). Not puts or
    deletes, which would take the template away from the rest of the run."""
    if method == "GET" or (method == "DELETE" and path.endswith("/pin")):
        return True
    return method == "POST" and path.endswith("/pin") and isinstance(body, dict) and body.get("verify") is True


@schemathesis.hook
def before_call(context, case, kwargs):
    op = case.operation
    method, path = op.method.upper(), op.path
    body = case.body
    if method == "PUT" and path == "/v1/templates/{name}" and isinstance(body, dict):
        runnable(body)
    params = case.path_parameters or {}
    if "name" in params and path.startswith("/v1/templates/") and names_template(method, path, body):
        if pick(params["name"], 2) == 0:
            params["name"] = TEMPLATE
    if "id" in params and path.startswith("/v1/runtimes/") and pick(params["id"], 2) == 0:
        params["id"] = runtime_for(params["id"])
    if method == "POST" and path == "/v1/runtimes" and isinstance(body, dict):
        which = pick(repr(sorted(body.items(), key=str)), 4)
        if which == 0 and len(fresh) < FRESH_LIMIT:
            body["id"] = f"fz-{len(fresh)}"
            fresh.append(body["id"])
        if which <= 1:
            body["template"] = TEMPLATE
