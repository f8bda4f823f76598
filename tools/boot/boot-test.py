#!/usr/bin/env python3
"""make boot-test: boots a real Debian 12 guest with the fresh kmsfs and
checks, from the guest's own journal and files, what an operator following
docs/guide.md gets at boot. See docs/boot-test.md for the scenarios.

    tools/boot/boot-test.py BIN

1. tools/boot/image.sh builds (once, cached in $KMSFS_BOOT_CACHE, default
   /var/cache/kmsfs-boot) a Debian 12 root with mmdebstrap: only the
   run-time packages the guide names, systemd, a kernel, python3 and the
   KMS emulator (moto, from wheels).
2. Each run unpacks a copy, installs the fresh package (tools/deb.sh BIN)
   with apt, sets it up as the guide says (the fstab line, the shipped
   units and drop-ins, a policy), adds the test's services and test data
   (random plaintexts encrypted under the emulator's fixed key; the guest
   keeps only their digests), and makes an ext4 disk of it.
3. qemu-system-x86_64 boots it twice, with no network device: the emulator
   runs inside the guest on its loopback. /dev/kvm here is nested and a
   stock kernel boots badly on it, so the guest runs under TCG (software
   emulation; KMSFS_BOOT_ACCEL=kvm to try KVM). The checker in the guest
   reports on the second serial port; the first is the console, kept in
   the work directory ($KMSFS_BOOT_WORK, default /var/tmp/kmsfs-boot).

Prints one line per check and ends with `boot-test: N passed, M failed`;
exits 1 if any failed. Where qemu cannot run (not root, no qemu and no way
to install it) it prints one `SKIP boot-test: REASON` line and exits 0.
"""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = ROOT / "tools" / "boot"
CACHE = pathlib.Path(os.environ.get("KMSFS_BOOT_CACHE", "/var/cache/kmsfs-boot"))
WORK = pathlib.Path(os.environ.get("KMSFS_BOOT_WORK", "/var/tmp/kmsfs-boot"))
ACCEL = os.environ.get("KMSFS_BOOT_ACCEL", "tcg")
BOOT_TIMEOUT = float(os.environ.get("KMSFS_BOOT_TIMEOUT", "1500"))  # one boot, checks and shutdown
SHUTDOWN_BOUND = 60.0  # systemd would wait 90 s for a hanging stop job

# What the checker reports, per boot: a check that never reports fails.
CHECKS = {
    1: ["boot1.finished", "a.fstab-mount", "a.consumer-reads", "a.other-refused", "a.status", "a.critical-chain",
        "journal.process-name", "journal.tag", "journal.fields", "journal.unit-field",
        "units.same-user", "units.same-user-elsewhere",
        "credentials.allowed", "credentials.denied", "credentials.forged", "c.service-prefetch", "e.segv-restart",
        "f.late-source"],
    2: ["boot2.finished", "d.clean-shutdown", "d.second-boot", "b.kms-down-eio", "b.kms-back", "g.silent-kms-ready"],
}

# Test data: NAME under /var/lib/kmsfs -> plaintext size. Random bytes, so
# a digest match means the exact plaintext.
SECRETS = {"db.password": 24, "api.token": 40, "tls/server.key": 1704, "units/only-a": 32, "cred/db.password": 20}

POLICY = """\
# The boot test's policy: unit-based access (item 3) and a credential (item 2).
units/only-a      allow_unit=unit-a.service
cred/db.password  allow_unit=cred-ok.service  credential=db-password
"""
FSTAB = ("/var/lib/kmsfs  /etc/secrets  kmsfs  allow_uid=app,policy=/etc/kmsfs/policy,"
         "credential_socket=/run/kmsfs/credentials.sock,region=us-east-1,_netdev,nofail  0  0\n")
# Scenario f: SOURCE on a file system that comes up late (as NFS, EFS or a
# second disk may), here a bind mount held back by late-source.service, and
# the guide's x-systemd.requires-mounts-for= on the kmsfs line.
LATE_SECRETS = {"late.password": 28}
FSTAB_LATE = ("/var/lib/kmsfs-late  /srv/latesource  none  bind,_netdev,nofail,"
              "x-systemd.requires=late-source.service,x-systemd.after=late-source.service  0  0\n"
              "/srv/latesource  /etc/latesecrets  kmsfs  allow_uid=app,region=us-east-1,_netdev,nofail,"
              "x-systemd.requires-mounts-for=/srv/latesource  0  0\n")
AWS_ENV = """\
AWS_ACCESS_KEY_ID=AKIDKMSFSBOOTTEST
AWS_SECRET_ACCESS_KEY=boot-test-secret-key-not-a-real-one
AWS_REGION=us-east-1
AWS_ENDPOINT_URL=http://127.0.0.1:4566
AWS_EC2_METADATA_DISABLED=true
"""
UNITS = ["kms-emulator.service", "consumer.service", "unit-a.service", "unit-b.service", "cred-ok.service",
         "cred-denied.service", "svc-consumer.service", "boot-test.service"]


def log(msg):
    print(msg, flush=True)


def skip(reason):
    log("SKIP boot-test: %s" % " ".join(reason.split()))
    sys.exit(0)


def sh(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def need_tools():
    if os.geteuid() != 0:
        skip("needs root (it builds a guest image and runs chroot)")
    missing = [p for c, p in (("qemu-system-x86_64", "qemu-system-x86"), ("mmdebstrap", "mmdebstrap"),
                              ("mkfs.ext4", "e2fsprogs")) if shutil.which(c) is None]
    if missing:
        log("boot-test: installing %s" % " ".join(missing))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        if r.returncode == 0:
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                               capture_output=True)
        if r.returncode != 0 or shutil.which("qemu-system-x86_64") is None:
            skip("qemu-system-x86_64 cannot be installed here (%s)" % r.stderr.decode(errors="replace").strip()[-200:])
    r = subprocess.run(["qemu-system-x86_64", "-accel", "help"], capture_output=True, text=True)
    if r.returncode != 0 or ACCEL not in r.stdout:
        skip("qemu-system-x86_64 has no %s accelerator (%s)" % (ACCEL, (r.stdout + r.stderr).strip()[-200:]))


def prepare(bin_path):
    """Unpacks the cached guest, installs the package and the test setup,
    returns (disk, kernel, initrd)."""
    image = subprocess.run([str(HERE / "image.sh"), str(CACHE)], check=True, stdout=subprocess.PIPE,
                           text=True).stdout.strip().splitlines()[-1]
    if WORK.exists():
        sh(["rm", "-rf", "--one-file-system", str(WORK)])
    root = WORK / "root"
    root.mkdir(parents=True)
    sh(["tar", "--numeric-owner", "-xpf", image, "-C", str(root)])

    deb = subprocess.run([str(ROOT / "tools" / "deb.sh"), bin_path, str(WORK)], check=True, stdout=subprocess.PIPE,
                         text=True).stdout.strip().splitlines()[-1]
    shutil.copy(deb, root / "tmp" / "kmsfs.deb")
    # apt resolves Depends: from what the guest already holds: it runs in a
    # network namespace of its own, with no interface to fetch anything.
    r = subprocess.run(["unshare", "--net", "chroot", str(root), "apt-get", "install", "-y", "-q",
                        "/tmp/kmsfs.deb"], capture_output=True, text=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if r.returncode != 0:
        raise SystemExit("boot-test: apt install of %s in the guest failed:\n%s%s" % (deb, r.stdout, r.stderr))
    (root / "tmp" / "kmsfs.deb").unlink()
    log("boot-test: installed %s in the guest (%s)" % (os.path.basename(deb), image))

    def chroot(*argv):
        sh(["chroot", str(root), *argv], stdout=subprocess.DEVNULL)

    for user in ("app", "other", "svc"):
        chroot("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user)

    lib = root / "usr/local/lib/boot-test"
    lib.mkdir(parents=True)
    for f in ("check.py", "read-secret", "forge-credential.py", "wait-port.py", "kms-emulator.py", "silent-kms.py"):
        shutil.copy(HERE / "guest" / f, lib / f)
        (lib / f).chmod(0o755)
    systemd = root / "etc/systemd/system"
    for u in UNITS:
        shutil.copy(HERE / "guest" / "units" / u, systemd / u)

    # As the guide says: the fstab line, the AWS settings for its mount unit,
    # the shipped consumer.conf as a drop-in, the shipped kmsfs.service with
    # its ExecStart (and the mountpoint in ExecStopPost) edited.
    doc = root / "usr/share/doc/kmsfs/systemd"
    with open(root / "etc/fstab", "a") as f:
        f.write(FSTAB)
        f.write(FSTAB_LATE)
    for m in ("etc-secrets.mount", "etc-latesecrets.mount"):
        (systemd / (m + ".d")).mkdir()
        (systemd / (m + ".d/aws.conf")).write_text("[Mount]\nEnvironmentFile=/etc/default/kmsfs\n")
    for u in ("late-source.service", "silent-kms.service"):   # not enabled: the checker enables silent-kms
        shutil.copy(HERE / "guest" / "units" / u, systemd / u)
    (root / "etc/default/kmsfs").write_text(AWS_ENV)
    (root / "etc/default/kmsfs").chmod(0o600)
    (systemd / "consumer.service.d").mkdir()
    shutil.copy(doc / "consumer.conf", systemd / "consumer.service.d/kmsfs.conf")
    unit = (doc / "kmsfs.service").read_text()
    edited = unit.replace("-o allow_uid=www-data,allow_gid=ssl-cert", "-o allow_uid=app,prefetch") \
                 .replace("/etc/secrets", "/srv/secrets")
    if "ExecStart=/usr/bin/kmsfs /var/lib/kmsfs /srv/secrets -f -o allow_uid=app,prefetch" not in edited:
        raise SystemExit("boot-test: the shipped kmsfs.service's ExecStart changed; update tools/boot/boot-test.py")
    (systemd / "kmsfs.service").write_text(edited)
    (root / "etc/kmsfs").mkdir()
    (root / "etc/kmsfs/policy").write_text(POLICY)
    for d in ("etc/secrets", "srv/secrets", "var/lib/boot-test", "etc/latesecrets", "srv/latesource"):
        (root / d).mkdir(parents=True, exist_ok=True)
    chroot("systemctl", "enable", "--quiet", *UNITS, "kmsfs.service")

    # The emulator's fixed key, and the secrets encrypted under it by the
    # guest's own emulator code (in the chroot: the same moto that serves).
    conf = root / "etc/kms-emulator"
    conf.mkdir()
    (conf / "key").write_text(os.urandom(32).hex() + "\n")
    (conf / "key-id").write_text(str(uuid.uuid4()) + "\n")
    digests = {}
    plain = root / "tmp/plain"
    for name, size in SECRETS.items():
        data = os.urandom(size)
        digests[name] = hashlib.sha256(data).hexdigest()
        plain.write_bytes(data)
        out = root / "var/lib/kmsfs" / (name + ".encrypted")
        out.parent.mkdir(parents=True, exist_ok=True)
        chroot("/usr/bin/python3", "/usr/local/lib/boot-test/kms-emulator.py", "encrypt", "/tmp/plain",
               "/var/lib/kmsfs/%s.encrypted" % name)
    for name, size in LATE_SECRETS.items():
        data = os.urandom(size)
        digests["late/" + name] = hashlib.sha256(data).hexdigest()
        plain.write_bytes(data)
        (root / "var/lib/kmsfs-late").mkdir(exist_ok=True)
        chroot("/usr/bin/python3", "/usr/local/lib/boot-test/kms-emulator.py", "encrypt", "/tmp/plain",
               "/var/lib/kmsfs-late/%s.encrypted" % name)
    plain.unlink()
    digests["n_secrets"] = len(SECRETS)
    (root / "var/lib/boot-test/expected.json").write_text(json.dumps(digests, indent=1))

    boot = root / "boot"
    kernel = sorted(boot.glob("vmlinuz-*"))[-1]
    initrd = sorted(boot.glob("initrd.img-*"))[-1]
    shutil.copy(kernel, WORK / "vmlinuz")
    shutil.copy(initrd, WORK / "initrd.img")
    disk = WORK / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(4 << 30)
    sh(["mkfs.ext4", "-q", "-F", "-L", "kmsfs-boot", "-d", str(root), str(disk)])
    sh(["rm", "-rf", "--one-file-system", str(root)])
    return disk, WORK / "vmlinuz", WORK / "initrd.img"


def boot(n, disk, kernel, initrd):
    """Boots the guest once; returns {check: (ok, detail)}, figures, and the
    seconds from the checker's POWEROFF to qemu's exit."""
    console, results = WORK / ("console-%d.log" % n), WORK / ("results-%d.log" % n)
    results.write_bytes(b"")
    argv = ["qemu-system-x86_64", "-accel", ACCEL if ACCEL != "tcg" else "tcg,thread=multi",
            "-cpu", "max" if ACCEL == "tcg" else "host", "-smp", "2", "-m", "2048",
            "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
            "-drive", "file=%s,format=raw,if=virtio,cache=unsafe" % disk,
            "-device", "virtio-rng-pci",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1",
            "-serial", "file:%s" % console, "-serial", "file:%s" % results]
    log("boot-test: boot %d (%s)" % (n, ACCEL))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, poweroff_at, checks, figures = 0, None, {}, {}
    try:
        while True:
            exited = proc.poll() is not None
            lines = results.read_bytes().decode(errors="replace").replace("\r", "").split("\n")
            for line in lines[seen:-1]:
                if line.startswith(("PASS ", "FAIL ")):
                    name, _, detail = line[5:].partition(": ")
                    checks[name] = (line.startswith("PASS"), detail)
                    log("  " + line)
                elif line.startswith("FIGURE "):
                    name, _, value = line[7:].partition(": ")
                    figures[name] = value
                    log("  " + line)
                elif line == "POWEROFF" and poweroff_at is None:
                    poweroff_at = time.monotonic()
                elif line.startswith(("PHASE", "DONE")):
                    log("  " + line)
            seen = max(seen, len(lines) - 1)
            if exited:
                break
            if time.monotonic() - t0 > BOOT_TIMEOUT or (poweroff_at and time.monotonic() - poweroff_at > 300):
                proc.kill()
                proc.wait()
                checks.setdefault("boot%d.timeout" % n, (False, "qemu killed after %.0f s; console %s" % (
                    time.monotonic() - t0, console)))
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode(errors="replace").strip()
    if out:
        log("  qemu: " + out[-500:])
    shutdown = time.monotonic() - poweroff_at if poweroff_at else None
    log("boot-test: boot %d took %.0f s" % (n, time.monotonic() - t0))
    return checks, figures, shutdown


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    need_tools()
    bin_path = os.path.abspath(sys.argv[1])
    t0 = time.monotonic()
    disk, kernel, initrd = prepare(bin_path)
    log("boot-test: guest ready in %.0f s" % (time.monotonic() - t0))
    passed, failed = 0, []
    for n in (1, 2):
        checks, figures, shutdown = boot(n, disk, kernel, initrd)
        ok = shutdown is not None and shutdown < SHUTDOWN_BOUND
        checks["d.shutdown-%d" % n] = (ok, "poweroff with the mounts live took %s (bound %.0f s)" % (
            "%.1f s" % shutdown if shutdown is not None else "no poweroff seen", SHUTDOWN_BOUND))
        log("  %s d.shutdown-%d: %s" % ("PASS" if ok else "FAIL", n, checks["d.shutdown-%d" % n][1]))
        for name in CHECKS[n]:
            if name not in checks:
                checks[name] = (False, "never reported (see %s)" % (WORK / ("console-%d.log" % n)))
                log("  FAIL %s: %s" % (name, checks[name][1]))
        for name, (ok, _) in checks.items():
            if ok:
                passed += 1
            else:
                failed.append(name)
        if n == 1 and not checks.get("d.shutdown-1", (False,))[0] and shutdown is None:
            break  # no second boot after a first that never finished
    log("boot-test: console logs and results in %s" % WORK)
    if failed:
        log("boot-test: failed: %s" % " ".join(failed))
    log("boot-test: %d passed, %d failed" % (passed, len(failed)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
