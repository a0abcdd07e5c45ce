#!/usr/bin/env python3
"""Replays what Qubes' own tools (qubesadmin: qvm-ls, qvm-prefs, qubes-prefs,
qvm-create, qvm-features, qvm-tags, qvm-service, qvm-firewall, qvm-clone,
qvm-remove, qvm-start, qvm-kill) send in dom0, over a qubesd socket, and checks
every answer the way qubesadmin parses it and qubesd gives it (the sequences
after main's first part come from running the real tools against the
simulator, see docs/simulator.md).

The socket protocol and the parsing below follow qubesadmin's QubesLocal and
PropertyHolder (core-admin-client: qubesadmin/app.py, qubesadmin/base.py).
"""

import socket
import sys

SOCK = sys.argv[1]


class QubesError(Exception):
    def __init__(self, cls, msg):
        super().__init__("%s: %s" % (cls, msg))
        self.cls = cls


def call(dest, method, arg=None, payload=None):
    """QubesLocal.qubesd_call over the socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCK)
    header = "{}+{} dom0 name {}\0".format(method, arg or "", dest)
    s.sendall(header.encode("ascii"))
    if payload is not None:
        s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = s.makefile("rb").read()
    s.close()
    return parse_response(data)


def parse_response(data):
    """PropertyHolder._parse_qubesd_response."""
    if data == b"":
        raise QubesError("QubesDaemonAccessError", "Got empty response from qubesd")
    if data[0:2] == b"\x30\x00":
        return data[2:]
    if data[0:2] == b"\x32\x00":
        (_, exc_type, _tb, fmt, args) = data.split(b"\x00", 4)
        raise QubesError(exc_type.decode("ascii"), fmt.decode("utf-8"))
    raise QubesError("QubesDaemonCommunicationError", "Invalid response format")


def unescape(line):
    escaped = False
    for char in line:
        if escaped:
            assert char in (ord("n"), ord("\\"))
            yield ord("\n") if char == ord("n") else char
            escaped = False
        elif char == ord("\\"):
            escaped = True
        else:
            yield char
    assert not escaped


def parse_type_value(prop_type, value, names, labels):
    """PropertyHolder._parse_type_value, checking the values make sense."""
    prop_type = prop_type.decode("ascii")
    assert prop_type.startswith("type="), prop_type
    prop_type = prop_type.split("=", 1)[1]
    value = value.decode()
    if prop_type == "str":
        return value
    if prop_type == "bool":
        if value == "":
            return AttributeError
        assert value in ("True", "False"), value
        return value == "True"
    if prop_type == "int":
        if value == "":
            return AttributeError
        return int(value)
    if prop_type == "vm":
        if value == "":
            return None
        assert value in names, "unknown qube %r" % value
        return value
    if prop_type == "label":
        if value == "":
            return None
        assert value in labels, "unknown label %r" % value
        return value
    raise AssertionError("invalid type " + prop_type)


def deserialize(resp, names, labels):
    (default, prop_type, value) = resp.split(b" ", 2)
    assert default.startswith(b"default=")
    is_default = default.split(b"=")[1].decode("ascii") == "True"
    return is_default, parse_type_value(prop_type, value, names, labels)


def get_all(dest, prefix, names, labels):
    """PropertyHolder._fetch_all_properties."""
    out = {}
    for line in call(dest, prefix + "GetAll").splitlines():
        line = bytes(unescape(line))
        name, rest = line.split(b" ", 1)
        out[name.decode()] = deserialize(rest, names, labels)
    return out


def vm_list():
    """QubesBase.domains: admin.vm.List parsing (qubesadmin/app.py)."""
    out = {}
    for line in call("dom0", "admin.vm.List").decode("ascii").splitlines():
        name, info = line.split(" ", 1)
        props = dict(x.split("=", 1) for x in info.split(" "))
        assert props["class"] in ("AdminVM", "AppVM", "TemplateVM", "StandaloneVM", "DispVM", "RemoteVM")
        out[name] = props
    return out


def qvm_ls():
    vms = vm_list()
    names = set(vms)
    labels = call("dom0", "admin.label.List").decode("ascii").splitlines()
    rows = []
    order = list(vms)
    assert order[0] == "dom0" and order[1:] == sorted(order[1:]), order
    for name, info in vms.items():
        props = get_all(name, "admin.vm.property.", names, labels)
        # columns NAME STATE CLASS LABEL TEMPLATE NETVM
        rows.append((name, info["state"], info["class"], props["label"][1],
                     props.get("template", (True, None))[1], props.get("netvm", (True, None))[1]))
        # property.List and GetAll agree
        plist = call(name, "admin.vm.property.List").decode("ascii").splitlines()
        assert sorted(plist) == sorted(props), name
    return rows


def qvm_prefs(vm, names, labels):
    """qvm-prefs VM: every property, with Get per property (no cache)."""
    out = {}
    for prop in call(vm, "admin.vm.property.List").decode("ascii").splitlines():
        out[prop] = deserialize(call(vm, "admin.vm.property.Get", prop), names, labels)
    return out


def main():
    rows = qvm_ls()
    names = {r[0] for r in rows}
    labels = call("dom0", "admin.label.List").decode("ascii").splitlines()
    # global qvm-prefs (qubes-prefs)
    for prop in call("dom0", "admin.property.List").decode("ascii").splitlines():
        deserialize(call("dom0", "admin.property.Get", prop), names, labels)
    work = qvm_prefs("work", names, labels)
    assert work["klass"] == (True, "AppVM")
    assert work["netvm"][1] in names
    # qvm-create --class AppVM --template fedora-42-xfce --label green compat1
    assert "green" in labels
    call("dom0", "admin.vm.Create.AppVM", "fedora-42-xfce", b"name=compat1 label=green")
    names.add("compat1")
    assert call("compat1", "admin.vm.property.Get", "template") == b"default=False type=vm fedora-42-xfce"
    tags = call("compat1", "admin.vm.tag.List").decode().splitlines()
    assert "created-by-dom0" in tags, tags
    # qvm-prefs compat1 memory 1000 / qvm-prefs --default compat1 memory
    call("compat1", "admin.vm.property.Set", "memory", b"1000")
    assert deserialize(call("compat1", "admin.vm.property.Get", "memory"), names, labels) == (False, 1000)
    call("compat1", "admin.vm.property.Reset", "memory")
    assert deserialize(call("compat1", "admin.vm.property.Get", "memory"), names, labels)[0] is True
    # GetDefault (property_get_default)
    resp = call("compat1", "admin.vm.property.GetDefault", "netvm")
    (t, v) = resp.split(b" ", 1)
    assert parse_type_value(t, v, names, labels) in names | {None}
    # qvm-prefs compat1 netvm '' (None)
    call("compat1", "admin.vm.property.Set", "netvm", b"")
    assert deserialize(call("compat1", "admin.vm.property.Get", "netvm"), names, labels) == (False, None)
    # qvm-features / qvm-service
    call("compat1", "admin.vm.feature.Set", "service.custom-persist", b"1")
    call("compat1", "admin.vm.feature.Set", "custom-persist.home", b"/home")
    assert call("compat1", "admin.vm.feature.Get", "service.custom-persist") == b"1"
    feats = call("compat1", "admin.vm.feature.List").decode().splitlines()
    assert feats[:2] == ["check-updates", "service.custom-persist"] or "service.custom-persist" in feats
    try:
        call("compat1", "admin.vm.feature.Get", "nope")
        raise AssertionError("missing feature must raise")
    except QubesError as e:
        assert e.cls == "QubesFeatureNotFoundError"
    # qvm-tags
    call("compat1", "admin.vm.tag.Set", "mytag")
    assert call("compat1", "admin.vm.tag.Get", "mytag") == b"1"
    # qvm-firewall compat1 list
    assert call("compat1", "admin.vm.firewall.Get") == b"action=accept\n"
    # qvm-volume info compat1:private
    info = dict(l.split("=", 1) for l in call("compat1", "admin.vm.volume.Info", "private").decode().splitlines())
    assert info["rw"] == "True" and int(info["size"]) > 0
    # qvm-clone compat1 compat2: create, copy properties, clone volumes
    call("dom0", "admin.vm.Create.AppVM", "fedora-42-xfce", b"name=compat2 label=green")
    names.add("compat2")
    for vol in call("compat1", "admin.vm.volume.List").decode().splitlines():
        if vol == "kernel":
            continue
        token = call("compat1", "admin.vm.volume.CloneFrom", vol)
        call("compat2", "admin.vm.volume.CloneTo", vol, token)
    # qvm-remove
    call("compat2", "admin.vm.Remove")
    call("compat1", "admin.vm.Remove")
    try:
        call("compat1", "admin.vm.List")
        raise AssertionError("removed qube must be gone")
    except QubesError as e:
        assert e.cls == "QubesVMNotFoundError"
    # qvm-remove sys-firewall: in use
    try:
        call("sys-firewall", "admin.vm.Remove")
        raise AssertionError("in-use qube must not be removed")
    except QubesError as e:
        assert e.cls == "QubesVMInUseError"
    firewall_rules()
    create_adminvm()
    default_netvm_running()
    create_in_pool()
    print("ok", len(rows), "qubes")


def parse_rule(line):
    """qubesadmin.firewall.Rule(line): the elements the client accepts."""
    opts, _, comment = line.partition("comment=")
    rule = dict(o.split("=", 1) for o in opts.split(" ") if o)
    known = {"action", "proto", "dsthost", "dst4", "dst6", "dstports",
             "icmptype", "specialtarget", "expire"}
    assert set(rule) <= known, line
    assert rule["action"] in ("accept", "drop"), line
    if comment:
        rule["comment"] = comment
    return rule


def firewall_rules():
    """qvm-firewall VM add ...: the client sends dst4=/dst6= for addresses
    (Host.rule), then lists qubesd's canonical form (Rule.api_rule)."""
    call("dom0", "admin.vm.Create.AppVM", "fedora-42-xfce", b"name=compat4 label=red")
    sent = (b"action=drop dst4=10.0.0.0/8\n"
            b"action=accept proto=tcp dsthost=example.com dstports=443\n"
            b"action=accept dst6=fd00::1\n"
            b"action=accept proto=icmp icmptype=8\n"
            b"action=accept comment=until 2100 expire=4102444800\n")
    try:
        call("compat4", "admin.vm.firewall.Set", payload=sent)
        raise AssertionError("'expire=' inside the comment is a bad comment")
    except QubesError as e:
        # a ValueError in qubesd: the connection is aborted
        assert e.cls == "QubesDaemonAccessError", e
    sent = sent.replace(b"comment=until 2100 expire=4102444800", b"expire=4102444800 comment=until 2100")
    call("compat4", "admin.vm.firewall.Set", payload=sent)
    got = call("compat4", "admin.vm.firewall.Get").decode().splitlines()
    assert got == [
        "action=drop dst4=10.0.0.0/8",
        "action=accept dsthost=example.com proto=tcp dstports=443-443",
        "action=accept dst6=fd00::1/128",
        "action=accept proto=icmp icmptype=8",
        "action=accept expire=4102444800 comment=until 2100",
    ], got
    for line in got:
        parse_rule(line)
    # qvm-firewall VM del --rule-no 0: the client sends the rest back as it got it
    call("compat4", "admin.vm.firewall.Set", payload="".join(l + "\n" for l in got[1:]).encode())
    assert call("compat4", "admin.vm.firewall.Get").decode().splitlines() == got[1:]
    for bad in (b"action=accept dstports=80\n", b"action=accept bogus=1\n",
                b"action=accept dst4=1.2.3.4 dsthost=5.6.7.8\n"):
        try:
            call("compat4", "admin.vm.firewall.Set", payload=bad)
            raise AssertionError("bad rule accepted: %r" % bad)
        except QubesError as e:
            assert e.cls == "QubesDaemonAccessError", e
    call("compat4", "admin.vm.Remove")


def create_adminvm():
    """qvm-create --class AdminVM: AdminVM's qid cannot be set."""
    try:
        call("dom0", "admin.vm.Create.AdminVM", payload=b"name=compat5 label=black")
        raise AssertionError("an AdminVM was created")
    except QubesError as e:
        assert e.cls == "QubesPropertyValueError", e
    assert "compat5" not in vm_list()


def default_netvm_running():
    """qubes-prefs default_netvm X: refused while the running default netvm
    has qubes connected and X is not running."""
    call("dom0", "admin.vm.Create.AppVM", "fedora-42-xfce", b"name=compat6 label=red")
    call("compat6", "admin.vm.property.Set", "provides_network", b"True")
    call("compat6", "admin.vm.property.Set", "netvm", b"sys-net")
    old = call("dom0", "admin.property.Get", "default_netvm")
    call("work", "admin.vm.Start")
    try:
        call("dom0", "admin.property.Set", "default_netvm", b"compat6")
        raise AssertionError("default_netvm moved to a halted qube")
    except QubesError as e:
        assert e.cls == "QubesVMNotRunningError", e
    for vm in ("work", "sys-firewall", "sys-net"):
        call(vm, "admin.vm.Kill")
    call("dom0", "admin.property.Set", "default_netvm", b"compat6")
    call("dom0", "admin.property.Set", "default_netvm", old.split(b" ", 2)[2])
    call("compat6", "admin.vm.Remove")




def create_in_pool():
    """qvm-create -P POOL / -p VOLUME=POOL (app.add_new_vm with pool/pools)."""
    def pool_of(vm, vol):
        info = call(vm, "admin.vm.volume.Info", vol).decode().splitlines()
        return dict(l.split("=", 1) for l in info)["pool"]
    call("dom0", "admin.vm.CreateInPool.AppVM", "fedora-42-xfce",
         b"name=compat7 label=red pool=varlibqubes")
    assert pool_of("compat7", "private") == "varlibqubes"
    assert pool_of("compat7", "kernel") == "linux-kernel"
    call("compat7", "admin.vm.Remove")
    try:
        call("dom0", "admin.vm.CreateInPool.AppVM", "fedora-42-xfce",
             b"name=compat8 label=red pool:root=varlibqubes")
        raise AssertionError("snapshot volume moved to another pool")
    except QubesError as e:
        assert e.cls == "QubesException", e
    assert "compat8" not in vm_list()


main()
