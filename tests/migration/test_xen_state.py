"""The hypervisor's per-domain state in a save (event channels in both ABIs, the grant table,
shared_info, the local APIC, a vCPU's Xen state): what one domain saves, another loads the
same; what a damaged or hostile stream gives is a ValueError naming the field, and nothing
half-loaded."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from guestkit import image
from pyxen.abi import event_channel as E
from pyxen.abi import grant_table as G
from pyxen.domain.builder import build_domain
from pyxen.domain.domain import Domain, DomainConfig
from pyxen.hv import event_channel as ev
from pyxen.hv import event_fifo, grant_table, hypercall_table
from pyxen.toolstack.accel import machine_factory

STORE_PORT = 1  # dom0's port a service stands at


def fresh(vcpus: int = 2) -> Domain:
    return build_domain(image("counter"), DomainConfig(name="state", vcpus=vcpus),
                        machine_factory("soft")[0], hypercall_table(), lambda _: None)


@pytest.fixture
def pair(guests) -> Iterator[tuple[Domain, Domain]]:
    a, b = fresh(), fresh()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def top(domain: Domain) -> int:
    """The last frame of the domain's RAM (the guest has not touched it: it is not started)."""
    return (domain.config.memory_mib << 8) - 1


def through_json(state: object) -> object:
    """What a stream carries is JSON: the state must survive it unchanged."""
    return json.loads(json.dumps(state))


def bind(domain: Domain, state: int, **fields: object) -> int:
    chans = domain.evtchn
    port = chans.get_free_port()
    chn = chans.bind(port)
    chn.state = state
    for name, value in fields.items():
        setattr(chn, name, value)
    return port


def channels(domain: Domain) -> list[tuple[object, ...]]:
    return [(c.state, c.notify_vcpu, c.remote_domid, c.remote_port, c.virq, c.priority,
             c.fifo_pending, c.fifo_lastq, c.consumer, c.remote_dom is domain)
            for c in domain.evtchn.ports]


def test_event_channels_travel(pair: tuple[Domain, Domain]) -> None:
    a, b = pair
    service = lambda: None  # noqa: E731
    bind(a, ev.ECS_VIRQ, virq=E.VIRQ_TIMER, notify_vcpu=1)
    bind(a, ev.ECS_IPI, notify_vcpu=1)
    bind(a, ev.ECS_UNBOUND, remote_domid=7)
    loop = bind(a, ev.ECS_INTERDOMAIN, remote_dom=a, remote_domid=a.domid)
    a.evtchn.ports[loop].remote_port = loop
    a.evtchn.bind_service(0, STORE_PORT, consumer=service)
    b.evtchn.load_state(through_json(a.evtchn.save_state()), {STORE_PORT: service})
    assert channels(b) == channels(a)


def test_fifo_queues_travel(pair: tuple[Domain, Domain]) -> None:
    a, b = pair
    sac = top(a) - 8
    for vcpu in (0, 1):
        event_fifo.init_control(a.evtchn, vcpu, sac, 64 * vcpu)
    a.evtchn.port_ops.add_page_to_event_array(sac + 1)
    port = bind(a, ev.ECS_IPI, priority=3)
    a.evtchn.port_ops.vcpus[0].queues[3].tail = port
    b.evtchn.load_state(through_json(a.evtchn.save_state()), {})
    fifo = b.evtchn.port_ops
    assert isinstance(fifo, event_fifo.EvtchnFifo)
    assert fifo.save_state() == a.evtchn.port_ops.save_state()
    assert channels(b) == channels(a)


def test_the_grant_table_travels(pair: tuple[Domain, Domain]) -> None:
    a, b = pair
    gt = a.grant_table
    gt.grow(3)
    gt.write_v1(5, 1, 0, 0x1234)
    gt.map_frame(1, top(a) - 2)
    b.grant_table.grow(3)
    b.memory.populate(top(a) - 2)
    b.memory.write((top(a) - 2) << 12,
                   a.memory.read((top(a) - 2) << 12, 4096))
    b.grant_table.load_state(through_json(gt.save_state()))
    assert b.grant_table.save_state() == gt.save_state()
    assert b.grant_table.header(5) == gt.header(5)


def test_a_vcpu_and_its_apic_travel(pair: tuple[Domain, Domain]) -> None:
    a, b = pair
    v = a.vcpus[1]
    v.online, v.upcall_vector, v.time_area = True, 0xF3, 0x1000
    v.virq_to_evtchn[E.VIRQ_TIMER] = 9
    v.lapic.write(0x80, 0x20)  # TPR
    v.lapic.write(0x320, 0x000200EF)  # LVT timer: periodic, vector 0xEF
    a.timers.set(v.singleshot, a.clock.now() + 10**12)
    v.set_periodic(10**12)  # first tick in 1000 s: never during the test, however loaded
    b.vcpus[1].load_xen_state(through_json(v.save_xen_state()))
    assert b.vcpus[1].save_xen_state() == v.save_xen_state()
    assert b.vcpus[1].singleshot.deadline == v.singleshot.deadline


@pytest.mark.parametrize(("row", "message"), [
    (None, "port 1 is malformed"),
    ([ev.ECS_IPI] * 3, "port 1 is malformed"),
    ([99, 0, 0, 0, 0, 0, 7, False, [0, 0], ""], "no valid state"),
    ([ev.ECS_IPI, 5, 0, 0, 0, 0, 7, False, [0, 0], ""], "no valid notify_vcpu"),
    ([ev.ECS_IPI, 0, 0, 0, 0, 0, 7, "yes", [0, 0], ""], "no valid fifo_pending"),
    ([ev.ECS_IPI, 0, 0, 0, 0, 0, 7, False, [0], ""], "no valid fifo_lastq"),
    ([ev.ECS_RESERVED, 0, 0, 0, 0, 0, 7, False, [0, 0], ""], "port 1 has state 1"),
    ([ev.ECS_INTERDOMAIN, 0, 3, 9, 0, 0, 7, False, [0, 0], ""], "peer ''"),
    ([ev.ECS_INTERDOMAIN, 0, 0, 9, 0, 0, 7, False, [0, 0], "service"], "dom0's port 9"),
])
def test_a_bad_port_is_refused_and_nothing_loads(pair: tuple[Domain, Domain], row: object,
                                                 message: str) -> None:
    a, b = pair
    bind(a, ev.ECS_IPI)
    state = through_json(a.evtchn.save_state())
    state["ports"][1] = row  # type: ignore[index]
    before = channels(b)
    with pytest.raises(ValueError, match=message) as err:
        b.evtchn.load_state(state, {})
    assert "\n" not in str(err.value)
    assert channels(b) == before


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 3}, "no valid version"),
    ({"nr_frames": 0}, "no valid nr_frames"),
    ({"gfns": {"grant_table:0": 5}}, "do not add up"),
    ({"aside": {"grant_table:0": "00"}}, "no valid grant_table:0"),
])
def test_a_bad_grant_table_is_refused(pair: tuple[Domain, Domain], change: dict[str, object],
                                      message: str) -> None:
    a, b = pair
    state = dict(through_json(a.grant_table.save_state()), **change)  # type: ignore[arg-type]
    before = b.grant_table.save_state()
    with pytest.raises(ValueError, match=message):
        b.grant_table.load_state(state)
    assert b.grant_table.save_state() == before


@pytest.mark.parametrize(("change", "message"), [
    ({"online": 1}, "no valid online"),
    ({"runstate": [0, 0, 0]}, "no valid runstate"),
    ({"runstate": [7, 0, 0, 0, 0, 0]}, "runstate 7"),
    ({"virq_to_evtchn": [0] * 5}, "no valid virq_to_evtchn"),
    ({"vcpu_info_gpa": 0xFFFF_F000_0000}, "vcpu_info"),
    ({"lapic": {"apic_base": "x"}}, "local APIC 2 has no valid apic_base"),
    ({"initial_state": {"sregs": "00", "regs": ""}}, "no valid sregs"),
])
def test_a_bad_vcpu_is_refused(pair: tuple[Domain, Domain], change: dict[str, object],
                               message: str) -> None:
    a, b = pair
    state = dict(through_json(a.vcpus[1].save_xen_state()), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        b.vcpus[1].load_xen_state(state)


class FarDomain:
    """The part of a domain in another process that a save sees: its domid."""

    domid = 7


def test_a_port_bound_to_another_process_travels_only_with_links(
        pair: tuple[Domain, Domain]) -> None:
    a, b = pair
    port = bind(a, ev.ECS_INTERDOMAIN, remote_link=FarDomain(), remote_domid=7, remote_port=33)
    with pytest.raises(ValueError, match=f"port {port} is bound to domain 7, which stays"):
        a.evtchn.save_state()  # a migration: domain 7 stays behind
    b.evtchn.load_state(through_json(a.evtchn.save_state(links=True)), {})
    chn = b.evtchn.ports[port]
    assert (chn.state, chn.remote_port, b.evtchn.to_relink) == (ev.ECS_RESERVED, 33, [port])
    # No domain 7 to bind again (no host here): unbound for it, as a surviving end is.
    assert b.evtchn.relink() == []
    assert (chn.state, chn.remote_domid, chn.remote_link) == (ev.ECS_UNBOUND, 7, None)
    assert b.evtchn.to_relink == []


def test_grants_shared_with_another_process_travel_only_with_links(
        pair: tuple[Domain, Domain]) -> None:
    a, b = pair
    gt = a.grant_table
    gt.write_v1(5, G.GTF_permit_access | G.GTF_reading | G.GTF_writing, 7, top(a))
    gt.active[5] = grant_table.Active(pin=grant_table.PIN_HSTW, domid=7, gfn=top(a))
    gt.maptrack = [None, grant_table.Mapping(9, G.GNTMAP_host_map, 7, top(a) - 4,
                                             granter=FarDomain())]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grant 5 is in use by domain 7, which stays"):
        gt.save_state()
    state = through_json(gt.save_state(links=True))
    assert state["maps"] == [[1, 9, G.GNTMAP_host_map, 7, top(a) - 4]]  # type: ignore[index]
    assert state["pinned"] == {"5": 7}  # type: ignore[index]
    b.grant_table.write_v1(5, G.GTF_permit_access | G.GTF_reading | G.GTF_writing, 7, top(a))
    b.grant_table.load_state(state)
    # the pin went with the old process: its holder pins again, which sets the flags again
    assert b.grant_table.header(5) == (G.GTF_permit_access, 7)
    assert b.grant_table.mapped_by == {7}
    assert b.grant_table.to_reattach == [(1, 9, G.GNTMAP_host_map, 7, top(a) - 4)]
    assert 1 not in b.grant_table.free_handles and 0 in b.grant_table.free_handles
    # no domain 7 to map from (no host here): the handle is free again, the frame empty
    assert grant_table.reattach(b) == set()
    assert b.grant_table.maptrack[1] is None and 1 in b.grant_table.free_handles
    assert top(a) - 4 not in b.grant_maps


@pytest.mark.parametrize(("maps", "message"), [
    ([[1, 9, 1]], "mapping is malformed"),
    ([[1, 9, G.GNTMAP_host_map | G.GNTMAP_device_map, 7, 100]], "not one pyxen makes"),
    ([[1, 9, G.GNTMAP_host_map, 0xFFF0, 100]], "not one pyxen makes"),
    ([[1 << 30, 9, G.GNTMAP_host_map, 7, 100]], "not one pyxen makes"),
    ([[1, 9, G.GNTMAP_host_map, 7, 1 << 40]], "not one pyxen makes"),
    ("x", "not a list"),
])
def test_a_bad_saved_grant_mapping_is_refused(pair: tuple[Domain, Domain], maps: object,
                                              message: str) -> None:
    a, b = pair
    state = dict(through_json(a.grant_table.save_state()), maps=maps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        b.grant_table.load_state(state)
    assert b.grant_table.to_reattach == []
