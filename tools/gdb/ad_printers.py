# gdb pretty-printers for tape-autodiff: the tape (one line per node, as
# ad::format_tape prints it, with "=>" at the node backward is running), a node,
# a Value handle, a Slot, a Parameter, SourceLoc, Attrs, and xtensor containers
# (xt::xarray / xt::xtensor: shape, then the first elements).
#
# Loaded automatically for every binary that links autodiff/tape.cpp, through its
# .debug_gdb_scripts entry, once gdb trusts this directory:
#     add-auto-load-safe-path /path/to/repo/tools/gdb     (in ~/.gdbinit, or -iex)
# or by hand in any session:
#     source /path/to/repo/tools/gdb/ad_printers.py
#
# The printers read libstdc++ and xtensor 0.24 members directly (std::vector's
# _M_impl, std::deque's map, xt::uvector's p_begin/p_end, xt::svector's
# m_begin/m_end) and never call into the program, so they also work on a core file.
# `p/r value` shows the raw structure.

import gdb
import gdb.printing


class ElementsParameter(gdb.Parameter):
    """How many elements the tape-autodiff printers show of a tensor."""

    set_doc = "Set how many tensor elements the tape-autodiff printers show."
    show_doc = "Show how many tensor elements the tape-autodiff printers show."

    def __init__(self):
        super().__init__("ad-elements", gdb.COMMAND_DATA, gdb.PARAM_UINTEGER)
        self.value = 8

    def get_show_string(self, svalue):
        return "tape-autodiff printers show " + svalue + " elements of a tensor"


try:
    _elements = gdb.parameter("ad-elements")
except RuntimeError:
    ElementsParameter()


def _max_elements():
    n = gdb.parameter("ad-elements")
    return 1 << 62 if n is None else int(n)  # None: `set ad-elements unlimited`


# ---- libstdc++ and xtensor internals --------------------------------------------


def _vector_items(v):
    """Elements of a std::vector as gdb.Values."""
    start = v["_M_impl"]["_M_start"]
    finish = v["_M_impl"]["_M_finish"]
    n = int(finish - start)
    if n < 0 or n > 10_000_000:
        raise gdb.error("std::vector looks uninitialised")
    return [(start + i).dereference() for i in range(n)]


def _vector_size(v):
    return int(v["_M_impl"]["_M_finish"] - v["_M_impl"]["_M_start"])


def _deque_at(d, i):
    """Element i of a std::deque (libstdc++'s map of fixed-size buffers)."""
    elem = d.type.strip_typedefs().template_argument(0)
    size = elem.sizeof
    buf = 512 // size if size < 512 else 1
    start = d["_M_impl"]["_M_start"]
    offset = i + int(start["_M_cur"] - start["_M_first"])
    node = start["_M_node"] + offset // buf
    return (node.dereference() + offset % buf).dereference()


def _deque_size(d):
    """libstdc++'s finish - start: whole buffers between them, plus the partial ends."""
    start, finish = d["_M_impl"]["_M_start"], d["_M_impl"]["_M_finish"]
    if int(start["_M_node"]) == 0:
        return 0
    elem = d.type.strip_typedefs().template_argument(0)
    buf = 512 // elem.sizeof if elem.sizeof < 512 else 1
    nodes = int(finish["_M_node"] - start["_M_node"])
    return buf * (nodes - 1) + int(finish["_M_cur"] - finish["_M_first"]) + int(start["_M_last"] - start["_M_cur"])


def _string(s):
    """A std::string's text."""
    n = int(s["_M_string_length"])
    if n == 0:
        return ""
    return s["_M_dataplus"]["_M_p"].string(length=min(n, 4096))


def _array(a):
    """A std::array of integers."""
    elems = a["_M_elems"]
    return [int(elems[i]) for i in range(elems.type.strip_typedefs().range()[1] + 1)]


def _tensor_shape(t):
    """Shape of an xt::xarray_container (svector) or xt::xtensor_container (std::array)."""
    shape = t["m_shape"]
    tag = shape.type.strip_typedefs().tag or ""
    if tag.startswith("std::array"):
        return _array(shape)
    begin, end = shape["m_begin"], shape["m_end"]
    n = int(end - begin)
    if n < 0 or n > 16:
        raise gdb.error("tensor shape looks uninitialised")
    return [int((begin + i).dereference()) for i in range(n)]


def _tensor_data(t):
    storage = t["m_storage"]
    begin, end = storage["p_begin"], storage["p_end"]
    return begin, int(end - begin)


def _shape_str(shape):
    return "(" + ",".join(str(d) for d in shape) + ")"


def _num(v):
    code = v.type.strip_typedefs().code
    if code == gdb.TYPE_CODE_FLT:
        return "%.6g" % float(v)
    return str(int(v))


def _tensor_str(t, limit=None):
    """"(2,4,6,6) {0.1, -0.2, ... 288 elements}" """
    try:
        shape = _tensor_shape(t)
        data, size = _tensor_data(t)
    except gdb.error as e:
        return "<unreadable tensor: %s>" % e
    if size == 0:
        return _shape_str(shape) + " {}"
    n = _max_elements() if limit is None else limit
    shown = [_num((data + i).dereference()) for i in range(min(n, size))]
    more = ", ... %d elements" % size if size > n else ""
    return "%s {%s%s}" % (_shape_str(shape), ", ".join(shown), more)


# ---- tape-autodiff types --------------------------------------------------------

def _op_name(node):
    """The op's name, read from the program: node.op points at the op's registry
    entry (ad::OpDef, autodiff/op.hpp), whose `name` is what ad::op_name returns. The
    printers keep no copy of the op names."""
    op = node["op"]
    if int(op) == 0:
        return "?"
    try:
        return op.dereference()["name"].string()
    except gdb.error:
        return "?"


def _attr_value(v):
    t = v.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_ARRAY or (t.tag or "").startswith("std::array"):
        elems = v["_M_elems"] if (t.tag or "").startswith("std::array") else v
        r = elems.type.strip_typedefs().range()
        items = [_num(elems[i]) for i in range(r[0], r[1] + 1)]
        return "x".join(items) if len(items) == 2 else "(" + ",".join(items) + ")"
    if t.code == gdb.TYPE_CODE_ENUM:
        return str(v).split("::")[-1]
    if t.code == gdb.TYPE_CODE_BOOL:
        return "true" if bool(v) else "false"
    if t.code == gdb.TYPE_CODE_STRUCT:  # a nested options struct (PoolBackwardAttrs::pool)
        fields = [f for f in t.fields() if not f.is_base_class and hasattr(f, "bitpos")]
        return "{" + " ".join("%s=%s" % (f.name, _attr_value(v[f.name])) for f in fields) + "}"
    return _num(v)


def _attrs_value(attrs):
    """The attribute struct a node's ad::Attrs blob holds, typed by its own name
    (attrs.type, e.g. "ad::Conv2dOptions"), or None when it holds none."""
    t = attrs["type"]
    if int(t) == 0:
        return None
    typ = gdb.lookup_type(t.string())
    return attrs["bytes"].address.cast(typ.pointer()).dereference()


def _attrs_str(attrs):
    """The fields of the node's attribute struct: "padding=1x1 stride=1x1"."""
    try:
        val = _attrs_value(attrs)
    except (gdb.error, RuntimeError) as e:
        return "<attributes: %s>" % e
    if val is None:
        return ""
    parts = []
    for f in val.type.strip_typedefs().fields():
        if f.is_base_class or not hasattr(f, "bitpos"):  # static members (kType) have no position
            continue
        parts.append("%s=%s" % (f.name, _attr_value(val[f.name])))
    return " ".join(parts)


def _where_str(where):
    line = int(where["line"])
    if line == 0:
        return ""
    try:
        f = where["file"].string()
    except gdb.error:
        f = "?"
    return "%s:%d" % (f.rsplit("/", 1)[-1], line)


def _node_tail(node):
    """' padding=1x1 stride=1x1 (d/d#7) "conv1" @ model.cpp:42' (attributes, the forward node
    a node recorded by a backward differentiates, label, call site)."""
    s = ""
    a = _attrs_str(node["attrs"])
    if a:
        s += " " + a
    try:  # recorded by a backward with create_graph: the forward node it differentiates
        grad_of = int(node["grad_of"])
    except gdb.error:
        grad_of = -1
    if grad_of >= 0:
        s += " (d/d#%d)" % grad_of
    label = _string(node["label"])
    if label:
        s += ' "%s"' % label
    where = _where_str(node["where"])
    if where:
        s += " @ " + where
    return s


def _node_inputs(node):
    return [int(i) for i in _vector_items(node["inputs"]) if int(i) >= 0]


class NodePrinter:
    """ad::Node<T> on its own: values named by id, as ad::format_node(node)."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        node = self.val
        op = _op_name(node)
        if op == "custom":
            op = "custom[%d]" % int(node["custom"])
        ins = _node_inputs(node)
        args = "(" + ", ".join("%%%d" % i for i in ins) + ")" if ins else ""
        return "%s%s -> %%%d%s" % (op, args, int(node["output"]), _node_tail(node))


class TapePrinter:
    """ad::Tape<T>: one line per node as ad::format_tape, "=>" at the running node."""

    def __init__(self, val):
        self.val = val

    def _slot_shape(self, slot):
        param = slot["param"]
        t = param.dereference()["value"] if int(param) != 0 else slot["data"]
        return _shape_str(_tensor_shape(t))

    def to_string(self):
        tape = self.val
        nodes = _vector_items(tape["nodes_"])
        slots = tape["slots_"]
        nslots = _deque_size(slots)
        cursor = int(tape["cursor_"])
        ty = tape.type.strip_typedefs()
        while ty.code in (gdb.TYPE_CODE_REF, getattr(gdb, "TYPE_CODE_RVALUE_REF", gdb.TYPE_CODE_REF)):
            ty = ty.target().strip_typedefs()
        head = "%s: %d nodes, %d values" % (ty.unqualified().tag or str(ty), len(nodes), nslots)
        if cursor >= 0:
            head += ", backward at #%d" % cursor
        if bool(tape["anomaly_"]):
            head += ", anomaly mode on"
        lines = [head]

        def ref(vid):
            if vid < 0 or vid >= nslots:
                return "%%%d?" % vid
            producer = int(_deque_at(slots, vid)["producer"])
            return "#%d" % producer if producer >= 0 else "%%%d" % vid

        try:
            custom_names = [_string(n) for n in _vector_items(tape["custom_names_"])]
        except gdb.error:
            custom_names = []

        for i, node in enumerate(nodes):
            op = _op_name(node)
            shown = op
            if op == "custom":
                c = int(node["custom"])
                shown = custom_names[c] if 0 <= c < len(custom_names) else "custom[%d]" % c
            ins = _node_inputs(node)
            args = "(" + ", ".join(ref(v) for v in ins) + ")" if ins else ""
            out = int(node["output"])
            try:
                shape = self._slot_shape(_deque_at(slots, out)) if 0 <= out < nslots else "?"
            except gdb.error:
                shape = "?"
            mark = "=> " if i == cursor else "   "
            lines.append("%s#%d %s%s -> %s%s" % (mark, i, shown, args, shape, _node_tail(node)))
        return "\n".join(lines)


class ValuePrinter:
    """ad::Value: "%7", or "(none)" for an absent value."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        i = int(self.val["id"])
        return "%%%d" % i if i >= 0 else "(none)"


class SlotPrinter:
    """ad::Slot<T>: producer and flags, then the value and gradient tensors."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        s = self.val
        parts = ["produced by #%d" % int(s["producer"]) if int(s["producer"]) >= 0 else "no producer node"]
        if bool(s["requires_grad"]):
            parts.append("requires grad")
        if bool(s["grad_ready"]):
            parts.append("grad ready")
        param = s["param"]
        if int(param) != 0:
            p = param.dereference()
            parts.append('parameter "%s"' % _string(p["name"]))
            return "slot: %s; value %s; grad %s" % (", ".join(parts), _tensor_str(p["value"]), _tensor_str(p["grad"]))
        return "slot: %s; value %s; grad %s" % (", ".join(parts), _tensor_str(s["data"]), _tensor_str(s["grad"]))


class ParameterPrinter:
    """ad::Parameter<T>: name, value and gradient."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        p = self.val
        return 'Parameter "%s": value %s; grad %s' % (_string(p["name"]), _tensor_str(p["value"]), _tensor_str(p["grad"]))


class SourceLocPrinter:
    def __init__(self, val):
        self.val = val

    def to_string(self):
        return _where_str(self.val) or "(unknown)"


class AttrsPrinter:
    """ad::Attrs: the op's attribute struct, by its type name: "ad::Conv2dOptions {padding=1x1 stride=1x1}"."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        t = self.val["type"]
        if int(t) == 0:
            return "(no attributes)"
        return "%s {%s}" % (t.string(), _attrs_str(self.val))


class OpDefPrinter:
    """ad::OpDef (*node.op): the op's registry entry, by name."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        return "op %s" % self.val["name"].string()


class TensorPrinter:
    """xt::xarray / xt::xtensor: the element type, shape, then the first elements."""

    def __init__(self, val):
        self.val = val

    def to_string(self):
        tag = self.val.type.strip_typedefs().tag or ""
        kind = "xt::xtensor" if tag.startswith("xt::xtensor_container") else "xt::xarray"
        try:
            elem = self.val["m_storage"].type.strip_typedefs().template_argument(0)
            kind += "<%s>" % elem
        except (gdb.error, RuntimeError):
            pass
        return "%s %s" % (kind, _tensor_str(self.val))


def build_printer():
    pp = gdb.printing.RegexpCollectionPrettyPrinter("tape-autodiff")
    pp.add_printer("Tape", r"^ad::Tape<.*>$", TapePrinter)
    pp.add_printer("Node", r"^ad::Node<.*>$", NodePrinter)
    pp.add_printer("Slot", r"^ad::Slot<.*>$", SlotPrinter)
    pp.add_printer("Parameter", r"^ad::Parameter<.*>$", ParameterPrinter)
    pp.add_printer("Value", r"^ad::Value$", ValuePrinter)
    pp.add_printer("SourceLoc", r"^ad::SourceLoc$", SourceLocPrinter)
    pp.add_printer("Attrs", r"^ad::Attrs$", AttrsPrinter)
    pp.add_printer("OpDef", r"^ad::OpDef$", OpDefPrinter)
    pp.add_printer("xarray", r"^xt::xarray_container<.*>$", TensorPrinter)
    pp.add_printer("xtensor", r"^xt::xtensor_container<.*>$", TensorPrinter)
    return pp


gdb.printing.register_pretty_printer(gdb.current_objfile(), build_printer(), replace=True)
