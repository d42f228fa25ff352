"""Helpers for suites that need two network namespaces joined by a veth
pair (a second "host" on a private subnet): made with the ip command,
removed again afterwards. Each suite picks its own names and addresses."""
import contextlib
import os
import shutil
import subprocess

import pytest


def ip(*args):
    """Run `ip ARGS...`; the CompletedProcess (text output captured)."""
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def netns_pair(ns_a, ns_b, veth_a, veth_b, addr_a, addr_b, brd=None, extra=()):
    """Namespaces ns_a and ns_b joined by veth_a (in ns_a, address addr_a/24)
    and veth_b (in ns_b, addr_b/24), both ends and both loopbacks up; brd is
    the subnet's broadcast address (given to both ends), extra are further
    `ip` argument tuples run after that. Yields (ns_a, ns_b); skips the test
    (saying why) without root, without ip, or where a step fails. Deleting
    the namespaces on the way out removes the veth ends too."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (running as uid %d)" % os.geteuid())
    if not shutil.which("ip"):
        pytest.skip("the ip command (iproute2) is not installed")
    bcast = ("brd", brd) if brd else ()
    made = []
    try:
        for ns in (ns_a, ns_b):
            r = ip("netns", "add", ns)
            if r.returncode != 0:
                pytest.skip("cannot create a network namespace: %s" % r.stderr.strip())
            made.append(ns)
        steps = [
            ("link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b,
             "netns", ns_b),
            ("-n", ns_a, "addr", "add", addr_a + "/24") + bcast + ("dev", veth_a),
            ("-n", ns_b, "addr", "add", addr_b + "/24") + bcast + ("dev", veth_b),
            ("-n", ns_a, "link", "set", veth_a, "up"),
            ("-n", ns_b, "link", "set", veth_b, "up"),
            ("-n", ns_a, "link", "set", "lo", "up"),
            ("-n", ns_b, "link", "set", "lo", "up"),
        ] + list(extra)
        for st in steps:
            r = ip(*st)
            if r.returncode != 0:
                pytest.skip("cannot set up veth between namespaces (ip %s): %s"
                            % (" ".join(st), r.stderr.strip()))
        yield ns_a, ns_b
    finally:
        for ns in made:
            ip("netns", "del", ns)
