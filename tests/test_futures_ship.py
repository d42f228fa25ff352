"""Instances of __main__ classes whose bases (any depth, mixins,
dataclasses) are also defined in __main__ work in the worker."""
import pytest

pytestmark = pytest.mark.timeout(60)


def test_main_class_hierarchy_ships(run_python, ok):
    out = ok(run_python("""
        import dataclasses
        from dataclasses import dataclass, field
        import pp

        class Base:
            def base(self):
                return "base"

        class Mixin:
            def mix(self):
                return "mix"

        class Middle(Base):
            pass

        class Leaf(Middle, Mixin):
            def __init__(self, v):
                self.v = v

        @dataclass
        class Point:
            x: int
            y: int = 0

        @dataclasses.dataclass
        class Point3(Point):
            z: int = 0
            tags: list = field(default_factory=list)

        def use(obj):
            return (type(obj).__name__, [c.__name__ for c in type(obj).__mro__])

        def describe(leaf):
            return leaf.base() + leaf.mix() + str(leaf.v)

        if __name__ == "__main__":
            with pp.Server(2) as s:
                print(s.submit(describe, (Leaf(7),))())
                p = s.submit(use, (Point3(1, 2, 3),))()
                print(p[0], p[1][:3])
                back = s.submit(lambda p: p, (Point3(1, 2, 3, ["a"]),))()
                print(back == Point3(1, 2, 3, ["a"]), type(back).__mro__[1].__name__)
    """))
    lines = out.strip().splitlines()
    assert lines[0] == "basemix7"
    assert lines[1] == "Point3 ['Point3', 'Point', 'object']"
    assert lines[2] == "True Point"
