# The model walker's loop (recur/walk.py: _reachable), compiled: reset() and truncate() walk
# a model on every training step to find its Recurs, and params() on every call.
#
# The same loop as the Python it replaces, with the same results in the same order: every
# object reachable from the root once (by identity), parents before children, each
# container's children in their own order. Python objects and calls throughout; what the
# compiled loop saves is the interpreter's dispatch on each of them.

from cpython.long cimport PyLong_FromVoidPtr

# What walk.py's _kind says a type is; walk.py takes its codes from here.
cpdef enum:
    LEAF
    SEQUENCE
    MAPPING
    OWN
    ATTRIBUTES


cdef inline bint is_private(object name) except -1:
    # name.startswith("_"), for an attribute's name: a str but for the odd __dict__.
    if type(name) is str:
        return len(<str>name) > 0 and (<str>name)[0] == u"_"
    return name.startswith("_")


cdef inline int kind_of(object obj, dict kinds, object classify) except -1:
    cdef object kind = kinds.get(type(obj))
    if kind is None:
        kind = classify(type(obj))
    return kind


def reachable(object root, set seen, bint with_leaves, dict kinds, object classify):
    """Every object reachable from `root` whose id is not in `seen` (which gains them),
    each once, parents before children; leaves too with `with_leaves` (the root is always
    taken unless it is a leaf). `kinds` maps a type to its kind, `classify(type)` decides
    (and records) one it lacks."""
    cdef list found = []
    cdef list pending = [root]
    cdef list kids
    cdef object obj, key, child, name, attributes
    cdef int kind
    cdef Py_ssize_t i
    while pending:
        obj = pending.pop()
        key = PyLong_FromVoidPtr(<void*>obj)     # id(obj)
        if key in seen:
            continue
        kind = kind_of(obj, kinds, classify)
        if kind == LEAF and not with_leaves:      # only the root can be one here
            continue
        seen.add(key)
        found.append(obj)
        if kind == LEAF:
            continue
        if kind == SEQUENCE:
            kids = list(obj)
        elif kind == MAPPING:
            kids = list(obj.values())
        elif kind == OWN:
            kids = [child for name, child in obj._children()]
        else:
            kids = []
            attributes = getattr(obj, "__dict__", None) or {}
            for name, child in attributes.items():
                if not is_private(name):
                    kids.append(child)
        for i in range(len(kids) - 1, -1, -1):
            child = kids[i]
            if with_leaves or kind_of(child, kinds, classify) != LEAF:
                pending.append(child)
    return found
