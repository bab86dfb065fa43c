//! The STAND-IN for the 1Password CLI `op`, shared by the provider tests, the conformance suite
//! and the CLI tests: no real `op` can be installed here. Write it to a file named `op` (mode
//! 0755) after replacing `{STATE}` (a JSON state file: vaults, items, `signed_in`, `delay`,
//! `accounts`) and `{LOG}` (one JSON line of argv per invocation) with quoted paths.
#![allow(dead_code)]

/// The stand-in `op`. `{STATE}` and `{LOG}` are replaced with paths when it is written.
pub const STANDIN_OP: &str = r#"#!/usr/bin/env python3
# STAND-IN for the 1Password CLI `op`, written by kz's tests: no real `op` can be installed here.
# It keeps its "account" in a JSON state file and logs each invocation's argv as one JSON line.
import json, re, sys, time, uuid

STATE = {STATE}
LOG = {LOG}

with open(STATE) as f:
    state = json.load(f)
argv = sys.argv[1:]
with open(LOG, "a") as f:
    f.write(json.dumps({"argv": argv}) + "\n")
time.sleep(state.get("delay", 0))

def fail(msg):
    sys.stderr.write("[ERROR] 2024/01/01 00:00:00 " + msg + "\n")
    sys.exit(1)

flags, pos = {}, []
i = 0
while i < len(argv):
    a = argv[i]
    if a.startswith("--") and "=" in a:
        k, v = a[2:].split("=", 1); flags[k] = v
    elif a in ("--account", "--vault", "--format", "--template"):
        flags[a[2:]] = argv[i + 1]; i += 1
    elif a.startswith("--"):
        flags[a[2:]] = True
    else:
        pos.append(a)
    i += 1

if not state.get("signed_in", True):
    fail("You are not currently signed in. Please run `op signin --help` for instructions")
if "accounts" in state and flags.get("account", state["accounts"][0]) not in state["accounts"]:
    fail("account is not signed in: " + flags["account"])

def save():
    with open(STATE, "w") as f:
        json.dump(state, f)

def find_vault(name):
    for v in state["vaults"]:
        if name in (v["name"], v["id"]):
            return v
    fail('"%s" isn\'t a vault in this account. Specify the vault with its ID or name.' % name)

def find_item(vault, name):
    for it in vault["items"]:
        if name in (it["title"], it["id"]):
            return it
    return None

def get_item(vault, name):
    it = find_item(vault, name)
    if it is None:
        fail('"%s" isn\'t an item in the "%s" vault. Specify the item with its ID or name.' % (name, vault["name"]))
    return it

def read_ref(ref):
    m = re.fullmatch(r"op://([^/]+)/([^/]+)/(?:([^/]+)/)?([^/]+)", ref)
    if not m:
        fail("invalid secret reference '%s': too many '/'" % ref)
    vault, item, section, field = m.groups()
    it = get_item(find_vault(vault), item)
    for f in it["fields"]:
        sec = f.get("section")
        if field not in (f.get("label"), f.get("id")):
            continue
        if section is None or (sec and section in (sec.get("id"), sec.get("label"))):
            return f.get("value", "")
    fail('"%s" isn\'t a field in the "%s" item. Could not find field %s' % (field, item, field))

cmd = pos[:2]
if pos[:1] == ["read"]:
    sys.stdout.write(read_ref(pos[1]) + "\n")
elif pos[:1] == ["inject"]:
    template = sys.stdin.read()
    out = re.sub(r"\{\{\s*(.*?)\s*\}\}", lambda m: read_ref(m.group(1)), template)
    sys.stdout.write(out)
elif pos[:1] == ["whoami"]:
    print("URL:        https://team.1password.com\nEmail:      dev@example.com")
elif cmd == ["vault", "get"]:
    v = find_vault(pos[2])
    print(json.dumps({"id": v["id"], "name": v["name"]}))
elif cmd == ["item", "get"]:
    it = get_item(find_vault(flags["vault"]), pos[2])
    print(json.dumps(it, indent=2))
elif cmd == ["item", "edit"]:
    vault = find_vault(flags["vault"])
    it = get_item(vault, pos[2])
    if "template" in flags:
        with open(flags["template"]) as f:
            new = json.load(f)
    else:
        new = json.loads(sys.stdin.read())
    new["id"] = it["id"]
    vault["items"][vault["items"].index(it)] = new
    save()
    print("ID: " + it["id"])
elif cmd == ["item", "create"]:
    vault = find_vault(flags["vault"])
    if "-" in pos[2:]:
        new = json.loads(sys.stdin.read())
    elif "template" in flags:
        with open(flags["template"]) as f:
            new = json.load(f)
    else:
        fail("no template: pass '-' and pipe a JSON item template")
    new["id"] = uuid.uuid4().hex[:26]
    vault["items"].append(new)
    save()
    print("ID: " + new["id"])
else:
    fail("unknown command " + " ".join(pos))
"#;
