"""Whether a server is this machine: tools that create roles able to read every user's rows
(the test plugin, the bench) refuse other servers unless told otherwise."""

import ipaddress


def is_local_host(host: str) -> bool:
    """Whether host is a Unix-socket folder, localhost or a loopback address (not resolved:
    a name that resolves to this machine today may not tomorrow)."""
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
