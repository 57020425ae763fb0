"""`netwatch.core.orientation`: declared ports correct heuristic orientations."""

from __future__ import annotations

from dataclasses import replace

from netwatch.core.analysis import TrafficAnalysis
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol
from netwatch.core.observed import Observations
from netwatch.core.orientation import DeclaredPorts, reorient
from tests.telemetry_builders import API, T0, WEB_1, attributor, conn, shop_cluster

# shop/api declares TCP 8080 (`http`); web declares nothing.


def heuristic(client: str, server: str, server_port: int, client_port: int) -> Connection:
    return replace(
        conn(client, server, server_port, client_port=client_port),
        orientation=Orientation.HEURISTIC,
    )


def test_a_guess_that_made_the_declared_port_the_client_is_reversed() -> None:
    # the port rule took web's 9000 for the server: api's 8080 is the declared one
    guessed = heuristic(API, WEB_1, 9000, 8080)
    item = attributor().attribute(guessed)
    c = item.connection
    assert (c.client_ip, c.client_port, c.server_ip, c.server_port) == (WEB_1, 9000, API, 8080)
    assert (c.bytes_out, c.bytes_in, c.packets_out, c.packets_in) == (1000, 100, 3, 2)
    assert c.orientation is Orientation.HEURISTIC
    assert (item.client.name, item.server.name, item.port) == ("web-6d9f-a", "api-5c7b-x", 8080)


def test_certain_orientations_and_agreeing_guesses_are_left_alone() -> None:
    att = attributor()
    syn = conn(API, WEB_1, 9000, client_port=8080)  # a SYN says api opened it
    assert att.attribute(syn).connection == syn
    agreeing = heuristic(WEB_1, API, 8080, 9000)
    assert att.attribute(agreeing).connection == agreeing


def test_only_declared_on_the_client_side_and_not_on_the_server_side_flips() -> None:
    declared = DeclaredPorts(shop_cluster())
    att = attributor()
    lookup = att.index.lookup
    both = heuristic(API, API, 8080, 8080)  # both ends declare: nothing to learn
    api, web = lookup(API, 0), lookup(WEB_1, 0)
    assert reorient(both, client=api, server=api, declared=declared) is both
    udp = replace(heuristic(API, WEB_1, 9000, 8080), protocol=Protocol.UDP)
    # api declares TCP 8080, not UDP 8080
    assert reorient(udp, client=api, server=web, declared=declared) is udp


def test_a_record_with_its_service_address_is_never_reoriented() -> None:
    via_service = replace(heuristic(API, WEB_1, 9000, 8080), service_ip="10.96.0.1")
    assert attributor().attribute(via_service).connection.client_ip == API


def test_reversing_twice_is_the_identity() -> None:
    c = conn(WEB_1, API, 8080, client_port=41000)
    assert c.reversed().reversed() == c
    assert c.reversed().five_tuple == (API, 8080, WEB_1, 41000, c.protocol)


def test_flow_file_rows_are_reoriented_like_the_agents_records() -> None:
    """`analyze`/`suggest` read rows, the agent Connections: one record, one answer."""
    guessed = heuristic(API, WEB_1, 9000, 8080)
    att = attributor()
    agent_view = att.attribute(guessed)
    row = (API, WEB_1, 9000, guessed.protocol, T0, T0 + 1, 1100, 5, None, 8080, True)
    analysis = TrafficAnalysis(att)
    analysis.add_rows([row])
    (group,) = analysis.result(static=False).groups
    assert (group.client.key, group.server.key, group.port) == ("shop/web", "shop/api", 8080)
    assert agent_view.port == group.port == 8080
    assert att.orient_row(row)[:3] == (WEB_1, API, 8080)
    assert att.orient_row((*row[:10], False)) == (*row[:10], False)  # a certain one stays
    observed = Observations()
    observed.add_rows([row], att)
    (obs,) = list(observed)
    assert (obs.sample.client.name, obs.sample.port) == ("web-6d9f-a", 8080)
