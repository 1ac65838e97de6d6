"""KNOSSOS skeletons: a Skeleton/Tree/Node model and NML XML reading and writing.

Coordinates are **0-based (x, y, z) mag-1 voxels** in memory. NML files that lack
``<nodes_0_based/>`` are 1-based (KNOSSOS' UI convention) and are shifted by -1 when read;
:meth:`Skeleton.to_xml` writes 0-based files with that tag unless ``one_based=True``.

Example:
    >>> skel = Skeleton(experiment="exp", scale=(10.0, 10.0, 25.0))
    >>> tree = skel.add_tree(comment="axon")
    >>> a = tree.add_node((10, 20, 3), radius=2.0, comment="start")
    >>> b = tree.add_node((12, 21, 4))
    >>> tree.add_edge(a.id, b.id)
    >>> back = Skeleton.from_xml(skel.to_xml(one_based=True))
    >>> back.trees[0].nodes[1].position, back.trees[0].nodes[1].comment, back.trees[0].edges
    ((10, 20, 3), 'start', [(1, 2)])
"""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ET
from typing import Any, Iterator, Sequence

import numpy as np

from ekn_core.errors import EknError

log = logging.getLogger("ekn.knossos")


class NMLError(EknError):
    """An NML file cannot be parsed; the message says what is wrong."""


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer() and not isinstance(value, bool):
        return repr(float(value))
    return str(value)


def _fmt_color(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclasses.dataclass
class Node:
    """A skeleton node.

    Attributes:
        id: File-wide unique node id.
        position: (x, y, z), 0-based mag-1 voxels.
        radius: Node radius in voxels.
        comment: Comment text ("" for none).
        attributes: Other NML attributes as strings (``inMag``, ``inVp``, ``time``, ...).
    """

    id: int
    position: tuple
    radius: float = 1.0
    comment: str = ""
    attributes: dict = dataclasses.field(default_factory=dict)

    @property
    def x(self):
        return self.position[0]

    @property
    def y(self):
        return self.position[1]

    @property
    def z(self):
        return self.position[2]


@dataclasses.dataclass
class Tree:
    """A tree (``<thing>``): nodes by id and directed edges ``(source, target)``.

    Attributes:
        id: Tree id.
        nodes: Nodes by id, in insertion order.
        edges: ``(source id, target id)`` pairs.
        comment: Tree name/comment.
        color: ``(r, g, b, a)`` or None.
        visible: Shown in the viewer.
        attributes: Other ``<thing>`` attributes as strings.
    """

    id: int
    nodes: dict = dataclasses.field(default_factory=dict)
    edges: list = dataclasses.field(default_factory=list)
    comment: str = ""
    color: tuple | None = None
    visible: bool = True
    attributes: dict = dataclasses.field(default_factory=dict)
    _skeleton: Any = dataclasses.field(default=None, repr=False, compare=False)

    def add_node(self, position: Sequence[float], radius: float = 1.0, comment: str = "", id: int | None = None,
                 **attributes: Any) -> Node:
        """Adds a node; its id is the skeleton's next free one unless given."""
        if id is None:
            id = self._skeleton.next_node_id() if self._skeleton is not None else max(self.nodes, default=0) + 1
        if self._skeleton is not None and self._skeleton.find_node(id) is not None:
            raise NMLError(f"node id {id} is already used")
        node = Node(int(id), tuple(position), float(radius), comment, {k: str(v) for k, v in attributes.items()})
        self.nodes[node.id] = node
        return node

    def add_edge(self, source: int, target: int) -> None:
        """Adds the edge ``source -> target`` between two nodes of this tree."""
        for end in (source, target):
            if end not in self.nodes:
                raise NMLError(f"tree {self.id} has no node {end}; add it before the edge")
        self.edges.append((int(source), int(target)))

    def coordinates(self) -> np.ndarray:
        """Node positions as an ``(n, 3)`` float array (x, y, z), in :attr:`nodes` order."""
        return np.array([n.position for n in self.nodes.values()], dtype=float).reshape(-1, 3)

    def neighbours(self, node_id: int) -> list[int]:
        """Ids of the nodes joined to ``node_id`` by an edge in either direction."""
        return [t if s == node_id else s for s, t in self.edges if node_id in (s, t)]


_TYPED_PARAMETERS = ("experiment", "scale", "editPosition", "activeNode", "MovementArea", "dataset")


@dataclasses.dataclass
class Skeleton:
    """A KNOSSOS annotation's skeleton and parameters.

    Attributes:
        trees: The trees.
        experiment: Data set name (``<experiment name>``), or None.
        scale: Voxel size (x, y, z) in nm, or None.
        edit_position: Viewer position (x, y, z) as stored, or None.
        active_node: Active node id as stored (knossos_utils writes a tree-local id), or None.
        movement_area: ``(min (x, y, z), size (x, y, z))`` in mag-1 voxels, or None.
        dataset_path: ``<dataset path>`` (config path, URL or ``embedded/<conf>``), or None.
        branchpoints: Node ids marked as branch points, in order.
        parameters: Other ``<parameters>`` children, tag -> attributes (kept for round trips).
        properties: ``<properties>`` children's attributes (extra node attributes' declarations).
    """

    trees: list = dataclasses.field(default_factory=list)
    experiment: str | None = None
    scale: tuple | None = None
    edit_position: tuple | None = None
    active_node: int | None = None
    movement_area: tuple | None = None
    dataset_path: str | None = None
    branchpoints: list = dataclasses.field(default_factory=list)
    parameters: dict = dataclasses.field(default_factory=dict)
    properties: list = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for tree in self.trees:
            tree._skeleton = self

    def add_tree(self, comment: str = "", id: int | None = None, **kwargs: Any) -> Tree:
        """Adds an empty tree (next free id unless given)."""
        id = int(id) if id is not None else max((t.id for t in self.trees), default=0) + 1
        if any(t.id == id for t in self.trees):
            raise NMLError(f"tree id {id} is already used")
        tree = Tree(id=id, comment=comment, **kwargs)
        tree._skeleton = self
        self.trees.append(tree)
        return tree

    def nodes(self) -> Iterator[Node]:
        """Every node of every tree."""
        for tree in self.trees:
            yield from tree.nodes.values()

    def find_node(self, node_id: int) -> Node | None:
        for tree in self.trees:
            if node_id in tree.nodes:
                return tree.nodes[node_id]
        return None

    def next_node_id(self) -> int:
        return max((n.id for n in self.nodes()), default=0) + 1

    @property
    def comments(self) -> dict[int, str]:
        """Node id -> comment, for the nodes that have one."""
        return {n.id: n.comment for n in self.nodes() if n.comment}

    # ------------------------------------------------------------------------------------ reading

    @classmethod
    def from_xml(cls, text: str | bytes) -> "Skeleton":
        """Parses NML text (a ``.nml`` file or a ``.k.zip``'s ``annotation.xml``)."""
        try:
            root = ET.fromstring(text)
        except ET.ParseError as err:
            raise NMLError(f"not valid NML XML: {err}") from err
        if root.tag != "things":
            raise NMLError(f"NML root element must be <things>, not <{root.tag}>")
        skel = cls()
        params = root.find("parameters")
        zero_based = False
        if params is not None:
            for child in params:
                attrib = dict(child.attrib)
                if child.tag == "nodes_0_based":
                    zero_based = True
                elif child.tag == "experiment":
                    skel.experiment = attrib.get("name")
                elif child.tag == "scale":
                    skel.scale = tuple(float(attrib[a]) for a in "xyz")
                elif child.tag == "editPosition":
                    skel.edit_position = tuple(_number(attrib[a]) for a in "xyz")
                elif child.tag == "activeNode":
                    skel.active_node = int(attrib["id"])
                elif child.tag == "dataset":
                    skel.dataset_path = attrib.get("path")
                    rest = {k: v for k, v in attrib.items() if k != "path"}
                    if rest:
                        skel.parameters["dataset"] = rest
                elif child.tag == "MovementArea":
                    skel.movement_area = _movement_area(attrib)
                else:
                    skel.parameters[child.tag] = attrib
        props = root.find("properties")
        skel.properties = [dict(p.attrib) for p in props] if props is not None else []
        shift = 0 if zero_based else 1
        try:
            for thing in root.iter("thing"):
                attrib = dict(thing.attrib)
                color = None
                if all(f"color.{c}" in attrib for c in "rgb"):
                    color = tuple(float(attrib.pop(f"color.{c}")) for c in "rgb") + (
                        float(attrib.pop("color.a", "1")),)
                tree = skel.add_tree(id=int(attrib.pop("id")), comment=attrib.pop("comment", ""), color=color,
                                     visible=attrib.pop("visible", "1") not in ("0", "false"))
                tree.attributes = attrib
                for node in thing.iter("node"):
                    a = dict(node.attrib)
                    position = tuple(_number(a.pop(c)) - shift for c in "xyz")
                    tree.add_node(position, float(a.pop("radius", "1")), id=int(a.pop("id")), **a)
                for edge in thing.iter("edge"):
                    tree.add_edge(int(edge.attrib["source"]), int(edge.attrib["target"]))
        except (KeyError, ValueError) as err:
            raise NMLError(f"malformed NML <thing>: {type(err).__name__}: {err}") from err
        for comment in root.iter("comment"):
            node = skel.find_node(int(comment.attrib.get("node", -1)))
            if node is None:
                log.warning("NML comment %r refers to a node that does not exist; dropped", comment.attrib)
            else:
                node.comment = comment.attrib.get("content", "")
        skel.branchpoints = [int(b.attrib["id"]) for b in root.iter("branchpoint")]
        return skel

    @classmethod
    def read(cls, path: str) -> "Skeleton":
        """Reads an ``.nml`` file (or the skeleton of a ``.k.zip``)."""
        if str(path).endswith(".k.zip"):
            from ekn_plugins.readers.knossos.kzip import read_kzip

            skeleton = read_kzip(path).skeleton
            if skeleton is None:
                raise NMLError(f"{path} holds no annotation.xml")
            return skeleton
        with open(path, "rb") as f:
            try:
                return cls.from_xml(f.read())
            except NMLError as err:
                raise NMLError(f"{path}: {err}") from err

    # ------------------------------------------------------------------------------------ writing

    def to_xml(self, one_based: bool = False) -> str:
        """NML text; 0-based with ``<nodes_0_based/>`` unless ``one_based``."""
        root = ET.Element("things")
        props = ET.SubElement(root, "properties")
        for prop in self.properties:
            ET.SubElement(props, "property", {k: str(v) for k, v in prop.items()})
        params = ET.SubElement(root, "parameters")
        if self.experiment is not None:
            ET.SubElement(params, "experiment", name=self.experiment)
        if self.dataset_path is not None or "dataset" in self.parameters:
            attrib = dict(self.parameters.get("dataset", {}))
            if self.dataset_path is not None:
                attrib = {"path": self.dataset_path, **attrib}
            ET.SubElement(params, "dataset", attrib)
        if self.scale is not None:
            ET.SubElement(params, "scale", {a: _fmt(float(v)) for a, v in zip("xyz", self.scale)})
        if not one_based:
            ET.SubElement(params, "nodes_0_based")
        if self.edit_position is not None:
            ET.SubElement(params, "editPosition", {a: _fmt(v) for a, v in zip("xyz", self.edit_position)})
        if self.active_node is not None:
            ET.SubElement(params, "activeNode", id=str(self.active_node))
        if self.movement_area is not None:
            low, size = self.movement_area
            attrib = {f"min.{a}": str(v) for a, v in zip("xyz", low)}
            attrib.update({f"size.{a}": str(v) for a, v in zip("xyz", size)})
            attrib.update({f"max.{a}": str(lo + s) for a, lo, s in zip("xyz", low, size)})
            ET.SubElement(params, "MovementArea", attrib)
        for tag, attrib in self.parameters.items():
            if tag not in _TYPED_PARAMETERS:
                ET.SubElement(params, tag, {k: str(v) for k, v in attrib.items()})
        shift = 1 if one_based else 0
        comments = ET.SubElement(root, "comments")
        for node in self.nodes():
            if node.comment:
                ET.SubElement(comments, "comment", node=str(node.id), content=node.comment)
        for tree in self.trees:
            attrib = {"id": str(tree.id)}
            if tree.color is not None:
                attrib.update({f"color.{c}": _fmt_color(v) for c, v in zip("rgba", tree.color)})
            attrib.update(comment=tree.comment, visible="1" if tree.visible else "0")
            attrib.update({k: str(v) for k, v in tree.attributes.items()})
            thing = ET.SubElement(root, "thing", attrib)
            nodes = ET.SubElement(thing, "nodes")
            for node in tree.nodes.values():
                a = {"id": str(node.id)}
                a.update({c: _fmt(v + shift) for c, v in zip("xyz", node.position)})
                a["radius"] = _fmt(float(node.radius))
                a.update({k: str(v) for k, v in node.attributes.items()})
                ET.SubElement(nodes, "node", a)
            edges = ET.SubElement(thing, "edges")
            for source, target in tree.edges:
                ET.SubElement(edges, "edge", source=str(source), target=str(target))
        branchpoints = ET.SubElement(root, "branchpoints")
        for node_id in self.branchpoints:
            ET.SubElement(branchpoints, "branchpoint", id=str(node_id))
        ET.indent(root, space="\t")
        return '<?xml version="1.0" ?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def write(self, path: str, one_based: bool = False) -> None:
        """Writes an ``.nml`` file atomically."""
        from ekn_plugins.readers.knossos.cubes import atomic_write

        atomic_write(path, self.to_xml(one_based=one_based).encode("utf-8"))


def _movement_area(attrib: dict) -> tuple:
    """``(min, size)`` from a ``<MovementArea>``; ``size.*`` preferred, else ``max - min``."""
    low = tuple(int(float(attrib.get(f"min.{a}", 0))) for a in "xyz")
    if all(f"size.{a}" in attrib for a in "xyz"):
        size = tuple(int(float(attrib[f"size.{a}"])) for a in "xyz")
    else:
        size = tuple(int(float(attrib[f"max.{a}"])) - lo for a, lo in zip("xyz", low))
    return low, size
