"""Hypothesis: random operations and racing transactions keep the tree equal to a model."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyxen.xenstore import Client, XenStored, XenStoreError

TOPS = ["a", "b", "c"]
paths = st.builds(
    lambda top, rest: "/" + "/".join([top, *rest]),
    st.sampled_from(TOPS),
    st.lists(st.sampled_from(["p", "q", "r"]), min_size=1, max_size=2),
)
values = st.binary(max_size=6)
ops = st.one_of(
    st.tuples(st.just("write"), paths, values),
    st.tuples(st.just("mkdir"), paths, st.just(b"")),
    st.tuples(st.just("rm"), paths, st.just(b"")),
)


class Model:
    """The expected tree: path -> value, parents implied."""

    def __init__(self) -> None:
        self.nodes: dict[str, bytes] = {}

    def apply(self, op: tuple[str, str, bytes]) -> None:
        kind, path, value = op
        if kind == "rm":
            for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
                del self.nodes[p]
            return
        parts = path.split("/")[1:]
        for i in range(1, len(parts)):
            self.nodes.setdefault("/" + "/".join(parts[:i]), b"")
        if kind == "write":
            self.nodes[path] = value
        else:
            self.nodes.setdefault(path, b"")


def do(client: Client, model: Model, op: tuple[str, str, bytes], tx: int = 0) -> bool:
    """Run op; removing below a missing parent must fail with ENOENT. True if it applied."""
    kind, path, value = op
    if kind == "rm" and path.rsplit("/", 1)[0] not in model.nodes:
        try:
            client.rm(path, tx)
        except XenStoreError as e:
            assert e.name == "ENOENT"
            return False
        raise AssertionError("rm below a missing parent succeeded")
    if kind == "write":
        client.write(path, value, tx)
    elif kind == "mkdir":
        client.mkdir(path, tx)
    else:
        client.rm(path, tx)
    model.apply(op)
    return True


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.xsd = XenStored()
        self.a = Client.in_process(self.xsd, 0)
        self.b = Client.in_process(self.xsd, 0)
        self.model = Model()
        for top in TOPS:
            self.a.mkdir("/" + top)
            self.model.apply(("mkdir", "/" + top, b""))

    @rule(op=ops)
    def direct(self, op: tuple[str, str, bytes]) -> None:
        do(self.a, self.model, op)

    @rule(tx_ops=st.lists(ops, min_size=1, max_size=4), racing=st.none() | ops)
    def transaction(self, tx_ops: list[tuple[str, str, bytes]], racing) -> None:  # noqa: ANN001
        tx = self.a.transaction_start()
        tx_model = Model()
        tx_model.nodes = dict(self.model.nodes)
        applied = [op for op in tx_ops if do(self.a, tx_model, op, tx)]
        if racing is not None:
            do(self.b, self.model, racing)
        try:
            self.a.transaction_end(tx)
        except XenStoreError as e:
            assert e.name == "EAGAIN"
            assert racing is not None, "EAGAIN without any concurrent change"
            tx_tops = {op[1].split("/")[1] for op in tx_ops}
            assert racing[1].split("/")[1] in tx_tops, "conflict reported on untouched subtree"
            return
        for op in applied:
            self.model.apply(op)

    @invariant()
    def tree_matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        seen: dict[str, bytes] = {}
        stack = ["/" + t for t in TOPS]
        while stack:
            path = stack.pop()
            seen[path] = self.a.read(path)
            stack += [f"{path}/{c}" for c in self.a.ls(path)]
        assert seen == self.model.nodes
        assert self.a.control("check") == "OK"


TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
