"""The port picked for an engine: free now, and out of reach of every port the kernel or SGLang hands out
before the engine binds it."""

from __future__ import annotations

import socket

from engine import ports


def test_an_engines_port_is_free_and_below_what_the_kernel_and_sglang_hand_out():
    picked = ports.free_ports(8)
    assert len(set(picked)) == 8
    for port in picked:
        assert port < ports.ephemeral_low() and not 22000 <= port <= 29999, port
        assert bindable(port)  # free: nothing listens there


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_port_in_use_is_passed_over(monkeypatch):
    low = next(p for p in range(15000, 16000) if bindable(p) and bindable(p + 1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", low))
        taken.listen()
        monkeypatch.setattr(ports, "PICKED_PORTS", range(low, low + 2))  # the taken port and one free one
        assert {ports.free_port() for _ in range(20)} == {low + 1}


def test_a_machine_whose_ephemeral_range_covers_the_picked_ports_gets_the_kernels_choice(
    monkeypatch, tmp_path
):
    spread = tmp_path / "ip_local_port_range"
    spread.write_text("1024\t65535\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE", spread)
    assert ports.ephemeral_low() == 1024
    assert bindable(ports.free_port())
