"""Expected failures of CPython's test_asyncio suite against ferroloop.

Maps a test id (module.Class.test, or module.Class.setUpClass etc. for a
failing fixture) to the reason it fails. Every entry states its reason:

* 'not implemented yet: <api>' for an API a later issue brings, <api> being
  one of: sockets, servers, datagrams, pipes, subprocesses, signals, TLS, sendfile;
* 'uses private attribute ... of the stdlib loop' for a test that pokes the
  stdlib loop's internals;
* 'flaky: <why>' for a timing-dependent test that may pass or fail;
* otherwise a sentence saying why the behaviour differs.

The runner fails on a failure that is not listed, on a listed test that
passes (so this list only shrinks), on a listed test that no longer exists,
and on the placeholder reason 'TODO: triage'.

Regenerate from a run with:
    python tests/conformance/driver.py --all --write-expected
which keeps the existing reasons, drops entries that pass and adds new
failures with the placeholder reason (to be triaged before committing).
Comments in this file are not kept by the regeneration.

EXPECTED_FAILURES holds what fails on every interpreter the runner is used
with; ONLY_ON['X.Y'] what fails on CPython X.Y alone (tests that exist only
there, or behaviour that differs there), each entry's reason saying why that
version. An entry must be needed on every version it applies to: a listed
test that passes is an error.
"""

EXPECTED_FAILURES = {
    # test_events
    'test_events.FerroloopEventLoopTests.test_create_server_multiple_hosts_ipv4': "patches asyncio.base_events.socket (the socket module of the stdlib loop's create_server) to fake binding to foreign addresses; ferroloop binds real sockets and gets EADDRNOTAVAIL",
    'test_events.FerroloopEventLoopTests.test_create_server_multiple_hosts_ipv6': "patches asyncio.base_events.socket (the socket module of the stdlib loop's create_server) to fake binding to foreign addresses; ferroloop binds real sockets and gets EADDRNOTAVAIL",
    'test_events.FerroloopEventLoopTests.test_timeout_rounding': 'uses private attribute loop._run_once of the stdlib loop',

    # test_subprocess
    'test_subprocess.GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher': "tests asyncio's child watchers: ferroloop reaps its own children (pidfds) and never asks the policy's child watcher, so an inactive one does not stop a spawn",
}

# Per CPython version: entries that apply to that version alone.
ONLY_ON = {
}
