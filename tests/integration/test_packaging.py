#!/usr/bin/python3
"""Packaging, checked against the daemon as far as this machine allows.

  ManPage     docs/scopeproxy.8 documents every flag `--help` prints and
              every key `check-config` prints, the commands, signals, exit
              status, environment and files, and groff renders it without
              a warning.
  DockerBuild docker/Dockerfile: the build stage's RUN lines (all but the
              apt-get ones) run as a script on a copy of the build context
              (docker/Dockerfile.dockerignore applied) with /out moved to a
              temporary directory; the result runs, holds everything the
              runtime stage copies, and needs no shared library the runtime
              stage does not install. No Docker engine is needed.
  Dockerfile  the runtime stage: user, volumes, ENV, port, health check,
              entrypoint, and that they agree with the daemon's defaults.
  Manifests   docker/compose.yaml and docker/k8s-sidecar.yaml parse (a
              strict YAML subset parser below, cross-checked with PyYAML
              when it is installed); the identity reaches the proxy
              container only; ports and paths agree with the daemon; the
              agent's HTTPS_PROXY points at the sidecar; the entrypoint
              accepts each manifest's settings.
  SystemdUnit config/scopeproxy.service: ExecStart's flags are accepted by
              the binary, the hardening is there, `systemd-analyze verify`
              (when installed) finds nothing.
  Entrypoint  docker/entrypoint.sh refuses a non-loopback listener without
              proxy_auth or SCOPEPROXY_NETWORK_BOUNDARY=1, execs the daemon
              otherwise, copies the identity, exports the CA certificate,
              and its health check works.
"""

import atexit
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (ProxyTestCase, free_port, hermetic_env, main, run_cmd,  # noqa: E402
                     scopeproxy_bin)

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.environ.get('SCOPEPROXY_SRCDIR') or os.path.join(HERE, '..', '..'))


def src(*parts):
    return os.path.join(SRCDIR, *parts)


def read(*parts):
    with open(src(*parts), encoding='utf-8') as f:
        return f.read()


_TMP = tempfile.mkdtemp(prefix='scopeproxy-packaging-')
_HOME = os.path.join(_TMP, 'home')
os.makedirs(_HOME)


def _cleanup_tmp():
    shutil.rmtree(_TMP, True)


def sp(*args, env=None, timeout=20):
    return run_cmd([scopeproxy_bin()] + [str(a) for a in args], timeout=timeout,
                   env=env or hermetic_env(_HOME))


_effective = None


def effective_defaults():
    """check-config with no file and a hermetic environment."""
    global _effective
    if _effective is None:
        r = sp('check-config')
        assert r.returncode == 0, r.stderr.decode()
        _effective = json.loads(r.stdout)
    return _effective


def default_port():
    return int(effective_defaults()['listen'].rsplit(':', 1)[1])


# ---------------------------------------------------------------------------
# roff
# ---------------------------------------------------------------------------

def roff_plain(line):
    """The words of one roff line: escapes resolved, macro name and quotes dropped."""
    s = re.sub(r'\\f(\[[^\]]*\]|\(..|.)', '', line)
    for a, b in (('\\-', '-'), ('\\%', ''), ('\\&', ''), ('\\~', ' '), ('\\(dq', '"'),
                 ('\\(aq', "'"), ('\\e', '\\'), ('\\ ', ' ')):
        s = s.replace(a, b)
    if s.startswith('.'):
        s = s.split(None, 1)[1] if ' ' in s else ''
        s = s.replace('"', '')
    return re.sub(r'\s+', ' ', s).strip()


def man_sections(text):
    """{section name: [roff lines]}"""
    secs, cur = {}, None
    for line in text.splitlines():
        if line.startswith('.SH '):
            cur = line[4:].strip().strip('"')
            secs[cur] = []
        elif cur is not None and not line.startswith('.\\"'):
            secs[cur].append(line)
    return secs


def tags(lines):
    """The tags of the .TP items of a section, as plain text."""
    return [roff_plain(lines[i + 1]) for i, l in enumerate(lines[:-1]) if l.startswith('.TP')]


class ManPage(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.roff = read('docs', 'scopeproxy.8')
        cls.secs = man_sections(cls.roff)

    def section(self, name):
        self.assertIn(name, self.secs, 'docs/scopeproxy.8 has no .SH %s section' % name)
        return self.secs[name]

    def test_every_flag_of_help(self):
        r = sp('--help')
        self.assertEqual(r.returncode, 0, r.stderr)
        help_text = r.stdout.decode()
        long_flags = set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9-]*)', help_text))
        short_flags = set(re.findall(r'^\s+(-[A-Za-z]),', help_text, re.M))
        self.assertIn('--listen', long_flags, 'could not read flags from --help')
        documented = ' '.join(tags(self.section('OPTIONS')))
        have_long = set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9-]*)', documented))
        have_short = set(re.findall(r'(?<![\w-])(-[A-Za-z])\b', documented))
        self.assertEqual(sorted(long_flags - have_long), [],
                         'flags printed by --help but not an OPTIONS item of docs/scopeproxy.8')
        self.assertEqual(sorted(short_flags - have_short), [],
                         'short flags printed by --help but not in OPTIONS of docs/scopeproxy.8')
        # and nothing documented that the binary does not have
        self.assertEqual(sorted(have_long - long_flags), [],
                         'OPTIONS documents flags --help does not print')

    def test_every_config_key(self):
        eff = effective_defaults()
        keys = set()
        for k, v in eff.items():
            if isinstance(v, dict) and k != 'gateway':   # gateway's keys are prefixes
                keys.update('%s.%s' % (k, sub) for sub in v)
            else:
                keys.add(k)
        documented = set(tags(self.section('CONFIGURATION')))
        self.assertEqual(sorted(keys - documented), [],
                         'keys printed by check-config but not a CONFIGURATION item')
        shipped = json.loads(read('config', 'scopeproxy.json'))
        shipped = {'%s.%s' % (k, s) if isinstance(v, dict) and k != 'gateway' else k
                   for k, v in shipped.items() for s in (v if isinstance(v, dict) else [None])}
        self.assertEqual(sorted(shipped - documented), [],
                         'keys of config/scopeproxy.json not documented')

    def test_commands_signals_status_environment_files(self):
        cmds = ' '.join(tags(self.section('COMMANDS')))
        for c in ('check-config', 'classify', 'ca export', 'ca env'):
            self.assertIn(c, cmds, 'COMMANDS lacks %s' % c)
        self.assertTrue({'SIGTERM', 'SIGINT', 'SIGHUP'} <= set(tags(self.section('SIGNALS'))))
        self.assertEqual(set(tags(self.section('EXIT STATUS'))), {'0', '1', '2'})
        r = sp('--help')
        self.assertRegex(r.stdout.decode(), r'0 on a clean stop, 1 on a runtime failure, 2 on a usage',
                         '--help and the man page disagree on exit statuses')
        self.assertTrue({'CODEX_HOME', 'HOME', 'XDG_STATE_HOME'} <= set(tags(self.section('ENVIRONMENT'))))
        files = ' '.join(tags(self.section('FILES')))
        for f in ('scopeproxy.json', 'auth.json', 'ca.key', 'ca.crt', 'bundle.pem', 'scopeproxy.service'):
            self.assertIn(f, files, 'FILES lacks %s' % f)
        audit = ' '.join(tags(self.section('AUDIT LOG')))
        for f in ('time', 'method', 'host', 'path', 'mode', 'provider', 'route', 'action', 'task',
                  'status', 'error'):
            self.assertRegex(audit, r'\b%s\b' % f, 'AUDIT LOG lacks the field %s' % f)
        for ep in ('/healthz', '/readyz'):
            self.assertIn(ep, tags(self.section('DESCRIPTION')))

    def test_version_in_title(self):
        r = sp('--version')
        version = r.stdout.decode().split()[1]      # "scopeproxy X.Y.Z (commit ...)"
        th = [l for l in self.roff.splitlines() if l.startswith('.TH ')]
        self.assertEqual(len(th), 1)
        self.assertIn('"scopeproxy %s"' % version, th[0], '.TH does not name the binary\'s version')

    def test_renders_without_warnings(self):
        if shutil.which('groff') is None:
            self.skipTest('groff is not installed (Debian package groff-base): '
                          'cannot check that docs/scopeproxy.8 renders without warnings')
        r = run_cmd(['groff', '-man', '-Tutf8', '-ww', '-z', src('docs', 'scopeproxy.8')])
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, b''),
                         'groff -man -Tutf8 -ww -z docs/scopeproxy.8 complained')
        r = run_cmd(['groff', '-man', '-Tutf8', '-ww', src('docs', 'scopeproxy.8')])
        page = r.stdout.decode('utf-8', 'replace')
        self.assertIn('scoped-credential HTTP proxy', page)
        if shutil.which('lexgrog'):
            r = run_cmd(['lexgrog', src('docs', 'scopeproxy.8')])
            self.assertEqual(r.returncode, 0, 'lexgrog cannot read the NAME section: %r' % r.stdout)


# ---------------------------------------------------------------------------
# Dockerfile and its build context
# ---------------------------------------------------------------------------

def dockerfile_instructions(text):
    """[(stage index, INSTRUCTION, argument string)]: continuation lines joined,
    comments dropped, as Docker does."""
    out, cur, stage = [], '', -1
    for line in text.splitlines():
        if re.match(r'^\s*#', line):
            continue
        if line.rstrip().endswith('\\'):
            cur += line.rstrip()[:-1] + ' '
            continue
        cur += line
        if cur.strip():
            word, _, rest = cur.strip().partition(' ')
            word = word.upper()
            if word == 'FROM':
                stage += 1
            out.append((stage, word, re.sub(r'\s+', ' ', rest.strip())))
        cur = ''
    return out


def apt_packages(run_arg):
    m = re.search(r'apt-get install ([^&;]*)', run_arg)
    return [w for w in m.group(1).split() if not w.startswith('-')] if m else []


class DockerIgnore:
    """Docker's .dockerignore rules: patterns in order, the last match wins,
    '!' re-includes, a pattern matching a parent directory matches what is
    inside it, '*' and '?' stop at '/', '**' crosses it."""

    def __init__(self, text):
        self.rules = []
        for line in text.splitlines():
            s = line.strip()
            if not s or s.startswith('#'):
                continue
            neg = s.startswith('!')
            s = posixpath.normpath(s.lstrip('!').strip().strip('/'))
            self.rules.append((neg, s, re.compile(self._regex(s))))

    @staticmethod
    def _regex(p):
        rx, i = '', 0
        while i < len(p):
            if p.startswith('**/', i):
                rx += '(?:.*/)?'
                i += 3
            elif p.startswith('**', i):
                rx += '.*'
                i += 2
            elif p[i] == '*':
                rx += '[^/]*'
                i += 1
            elif p[i] == '?':
                rx += '[^/]'
                i += 1
            else:
                rx += re.escape(p[i])
                i += 1
        return rx

    def excluded(self, rel):
        parts = rel.split('/')
        prefixes = ['/'.join(parts[:k]) for k in range(1, len(parts) + 1)]
        result = False
        for neg, _, rx in self.rules:
            if any(rx.fullmatch(p) for p in prefixes):
                result = not neg
        return result

    def may_include_below(self, reldir):
        return any(neg and (text.startswith(reldir + '/') or '**' in text)
                   for neg, text, _ in self.rules)

    def copy_context(self, root, dest):
        """Copy what `docker build` would send; returns the relative paths."""
        copied = []
        for dirpath, dirnames, filenames in os.walk(root):
            reldir = os.path.relpath(dirpath, root)
            reldir = '' if reldir == '.' else reldir
            keep = []
            for d in dirnames:
                rel = posixpath.join(reldir, d) if reldir else d
                if d == '.git' or (self.excluded(rel) and not self.may_include_below(rel)):
                    continue
                keep.append(d)
            dirnames[:] = keep
            for f in filenames:
                rel = posixpath.join(reldir, f) if reldir else f
                if self.excluded(rel):
                    continue
                os.makedirs(os.path.join(dest, reldir), exist_ok=True)
                shutil.copy2(os.path.join(dirpath, f), os.path.join(dest, rel), follow_symlinks=False)
                copied.append(rel)
        return copied


def build_env():
    """The environment of a nested build: no jobserver or flags of the
    `make check` that runs us, no DESTDIR, no proxies."""
    env = hermetic_env(_HOME)
    for k in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKEOVERRIDES', 'DESTDIR', 'CONFIG_SITE',
              'CFLAGS', 'CPPFLAGS', 'LDFLAGS', 'LIBS', 'CC'):
        env.pop(k, None)
    return env


class Dockerfile(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.ins = dockerfile_instructions(read('docker', 'Dockerfile'))
        cls.nstages = max(s for s, _, _ in cls.ins) + 1
        cls.runtime = cls.nstages - 1

    def stage(self, n, word):
        return [a for s, w, a in self.ins if s == n and w == word]

    def env(self, n):
        env = {}
        for a in self.stage(n, 'ENV'):
            for kv in shlex.split(a):
                k, _, v = kv.partition('=')
                env[k] = v
        return env

    def test_stages(self):
        self.assertEqual(self.nstages, 2)
        self.assertEqual(self.stage(0, 'FROM'), ['debian:12 AS build'])
        self.assertEqual(self.stage(1, 'FROM'), ['debian:12-slim'])
        build_pkgs = set(sum((apt_packages(a) for a in self.stage(0, 'RUN')), []))
        for p in ('libmicrohttpd-dev', 'libcurl4-openssl-dev', 'libjansson-dev', 'libssl-dev',
                  'libsodium-dev', 'pkg-config', 'autoconf', 'automake', 'libtool', 'build-essential'):
            self.assertIn(p, build_pkgs)
        runtime_pkgs = set(sum((apt_packages(a) for a in self.stage(1, 'RUN')), []))
        self.assertEqual(runtime_pkgs, {'libmicrohttpd12', 'libcurl4', 'libjansson4', 'libssl3',
                                        'libsodium23', 'ca-certificates'})
        self.assertFalse([p for p in runtime_pkgs if p.endswith('-dev')])
        self.assertIn('autoreconf -fi && ./configure --prefix=/usr --sysconfdir=/etc && '
                      'make -j"$(nproc)" && make install DESTDIR=/out', self.stage(0, 'RUN'),
                      'a bare make -j runs every job at once: one per CPU is enough')

    def test_runtime_user_paths_port_health(self):
        rt = self.runtime
        self.assertEqual(self.stage(rt, 'USER'), ['10001:10001'])
        runs = ' '.join(self.stage(rt, 'RUN'))
        self.assertRegex(runs, r'useradd [^&]*--uid 10001\b')
        env = self.env(rt)
        # the daemon's own defaults, under the image's environment
        r = sp('check-config', env=hermetic_env(_HOME, {
            'CODEX_HOME': env['CODEX_HOME'], 'XDG_STATE_HOME': env['XDG_STATE_HOME'],
            'HOME': env['HOME']}))
        self.assertEqual(r.returncode, 0, r.stderr)
        eff = json.loads(r.stdout)
        volumes = set(json.loads(self.stage(rt, 'VOLUME')[0]))
        self.assertEqual(volumes, {os.path.dirname(eff['auth_file']), eff['ca_dir']})
        self.assertEqual(eff['auth_file'], '/var/lib/scopeproxy/codex/auth.json')
        self.assertEqual(eff['ca_dir'], '/var/lib/scopeproxy/ca')
        self.assertEqual(env['SCOPEPROXY_CONFIG'], '/etc/scopeproxy/scopeproxy.json')
        for d in volumes - {'/etc/scopeproxy'}:
            self.assertRegex(runs, r'install -d -m 0700 -o 10001 -g 10001 [^&]*%s(?=\s|$)' % re.escape(d),
                             '%s is not created owned by the runtime user' % d)
        self.assertEqual(self.stage(rt, 'EXPOSE'), [str(default_port())])
        entry = json.loads(self.stage(rt, 'ENTRYPOINT')[0])
        self.assertEqual(entry, ['/usr/local/bin/scopeproxy-entrypoint'])
        hc = self.stage(rt, 'HEALTHCHECK')[0]
        self.assertEqual(json.loads(hc.split(' CMD ', 1)[1]), entry + ['healthcheck'])
        copies = [a.split() for a in self.stage(rt, 'COPY')]
        self.assertIn(entry[0], [c[-1] for c in copies])
        self.assertTrue(all(c[0] == '--from=build' for c in copies))

    def test_no_config_volume(self):
        """A VOLUME at /etc/scopeproxy makes a named volume copy the image's
        configuration once and keep it across upgrades: a key renamed later
        then stops the new daemon (exit 2) in a restart loop. The image
        ships the default file; a user's own is a read-only bind mount."""
        rt = self.runtime
        for v in self.stage(rt, 'VOLUME'):
            for path in json.loads(v):
                self.assertFalse(path == '/etc' or path.startswith('/etc/'),
                                 'VOLUME %s outlives image upgrades' % path)
        copies = [a.split() for a in self.stage(rt, 'COPY')]
        self.assertIn('/etc/scopeproxy/', [c[-1] for c in copies], 'the default configuration is not shipped')

    def test_healthcheck_start_interval(self):
        """Without --start-interval the first probe comes one --interval
        (30 s) after start, and `depends_on: service_healthy` waits that
        long on every `up`."""
        opts, _ = dockerfile_healthcheck()
        for k in ('interval', 'timeout', 'start-period', 'start-interval', 'retries'):
            self.assertIn(k, opts, 'HEALTHCHECK has no --%s' % k)
        self.assertLessEqual(duration(opts['start-interval']), 2)
        self.assertGreaterEqual(duration(opts['start-period']), 10)
        self.assertLess(duration(opts['start-interval']), duration(opts['interval']))

    def test_oci_labels(self):
        rt = self.runtime
        labels = {}
        for a in self.stage(rt, 'LABEL'):
            for kv in shlex.split(a):
                k, _, v = kv.partition('=')
                labels[k] = v
        args = dockerfile_args(rt)
        for k in ('title', 'description', 'source', 'version'):
            self.assertIn('org.opencontainers.image.' + k, labels)
        self.assertEqual(labels['org.opencontainers.image.title'], 'scopeproxy')
        self.assertTrue(labels['org.opencontainers.image.description'])
        self.assertEqual(labels['org.opencontainers.image.version'], '${VERSION}',
                         'the version label does not come from the VERSION build arg')
        version = sp('--version').stdout.decode().split()[1]
        self.assertEqual(args.get('VERSION'), version, 'ARG VERSION is not the daemon\'s version')
        self.assertIn('SOURCE', args)
        self.assertEqual(labels['org.opencontainers.image.source'], '${SOURCE}')


class DockerBuild(ProxyTestCase):
    TIMEOUT = 300

    def test_build_stage_as_script(self):
        for tool in ('autoreconf', 'make', 'cc'):
            if shutil.which(tool) is None:
                self.skipTest('%s is not installed (scripts/install-deps installs it)' % tool)
        ins = dockerfile_instructions(read('docker', 'Dockerfile'))
        self.assertEqual(ins[0][1:], ('FROM', 'debian:12 AS build'))
        work = os.path.join(_TMP, 'docker-build')
        ctx, out = os.path.join(work, 'src'), os.path.join(work, 'out')
        os.makedirs(ctx)

        ignore = DockerIgnore(read('docker', 'Dockerfile.dockerignore'))
        copied = ignore.copy_context(SRCDIR, ctx)
        self.assertIn('proxy/main.c', copied)
        self.assertIn('docker/entrypoint.sh', copied)
        generated = [p for p in copied if re.search(
            r'(\.o|\.a|/Makefile|^Makefile|^configure|config\.status|/scopeproxy)$', p)]
        self.assertEqual(generated, [], 'the build context carries build output')

        def moved(arg):
            arg = re.sub(r'(?<![\w./-])/out(?=[/\s]|$)', out, arg)
            return re.sub(r'(?<![\w./-])/src(?=[/\s]|$)', ctx, arg)

        cwd, ran = ctx, []
        for stage, word, arg in ins:
            if stage != 0:
                break
            if word == 'WORKDIR':
                self.assertEqual(arg, '/src', 'the test maps only /src to the context copy')
            elif word == 'COPY':
                self.assertEqual(arg, '. /src')
            elif word == 'RUN' and 'apt-get' not in arg:
                r = self._run(moved(arg), cwd)
                self.assertEqual(r.returncode, 0, 'RUN %s failed:\n%s' % (
                    arg, (r.stdout + r.stderr).decode('utf-8', 'replace')[-4000:]))
                ran.append(arg)
        self.assertTrue(any('make install' in a for a in ran))

        binary = os.path.join(out, 'usr', 'bin', 'scopeproxy')
        r = run_cmd([binary, '--version'], env=hermetic_env(_HOME))
        self.assertEqual(r.returncode, 0, r.stderr)
        # the same version and libraries; the commit is 'unknown' there
        # (the stage builds from a copy without .git)
        strip = lambda out: re.sub(rb' \(commit [^)]*\)', b'', out)
        self.assertEqual(strip(r.stdout), strip(sp('--version').stdout))
        # everything the runtime stage copies from the build stage exists
        for stage, word, arg in ins:
            if word == 'COPY' and arg.startswith('--from=build '):
                srcpath = arg.split()[1]
                self.assertTrue(os.path.exists(moved(srcpath)), 'COPY %s: not built' % arg)
        ep = os.path.join(out, 'usr', 'local', 'bin', 'scopeproxy-entrypoint')
        self.assertTrue(os.access(ep, os.X_OK))
        with open(ep) as a:
            self.assertEqual(a.read(), read('docker', 'entrypoint.sh'))
        if re.search(r'^include mk/packaging\.am$', read('Makefile.am'), re.M):
            self.assertTrue(os.path.exists(os.path.join(out, 'usr', 'share', 'man', 'man8',
                                                        'scopeproxy.8')), 'man page not installed')
        self._runtime_libraries(binary, ins)

    def _run(self, cmd, cwd):
        p = subprocess.run(['/bin/sh', '-c', cmd], cwd=cwd, env=build_env(), timeout=280,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return p

    def _runtime_libraries(self, binary, ins):
        """Each shared library the binary needs comes from a package the
        runtime stage installs (or libc6, which every image has)."""
        if not all(shutil.which(t) for t in ('readelf', 'ldd', 'dpkg')):
            return
        last = max(s for s, _, _ in ins)
        runtime_pkgs = set(sum((apt_packages(a) for s, w, a in ins if s == last and w == 'RUN'), []))
        needed = re.findall(r'\(NEEDED\)\s+Shared library: \[([^\]]+)\]',
                            run_cmd(['readelf', '-d', binary]).stdout.decode())
        paths = dict(re.findall(r'^\s*(\S+) => (/\S+)', run_cmd(['ldd', binary]).stdout.decode(), re.M))
        self.assertIn('libcurl.so.4', needed)
        missing = []
        for so in needed:
            path = paths.get(so)
            self.assertIsNotNone(path, 'ldd does not resolve %s' % so)
            cands = {path, os.path.realpath(path)}
            cands |= {re.sub(r'^/usr/lib/', '/lib/', c) for c in cands} | \
                {re.sub(r'^/lib/', '/usr/lib/', c) for c in cands}
            pkg = None
            for c in cands:
                r = run_cmd(['dpkg', '-S', c])
                if r.returncode == 0:
                    pkg = r.stdout.decode().split(':')[0]
                    break
            if pkg is None:
                continue        # not from a Debian package: nothing to compare
            if pkg not in runtime_pkgs | {'libc6'}:
                missing.append('%s (%s)' % (so, pkg))
        self.assertEqual(missing, [], 'the runtime stage does not install these libraries\' packages')


# ---------------------------------------------------------------------------
# YAML: a strict subset (block mappings and sequences, plain and quoted
# scalars, empty flow collections, comments, '---'); anything else is an
# error, which keeps the manifests simple. PyYAML, when present, must agree.
# ---------------------------------------------------------------------------

class YAMLError(Exception):
    pass


_KEY = re.compile(r'^(?P<key>"[^"]*"|\'[^\']*\'|[^\s#\'"{\[\]},&*!|>%@`-][^:#]*?|-[^\s:#][^:#]*?)'
                  r'\s*:(?:\s+(?P<val>.*))?$')


def _strip_comment(line):
    q = None
    for i, c in enumerate(line):
        if q:
            if c == q:
                q = None
        elif c in '"\'' and (i == 0 or line[i - 1] in ' \t:-[{,'):
            q = c
        elif c == '#' and (i == 0 or line[i - 1] in ' \t'):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(s, where):
    if s.startswith('"'):
        if not s.endswith('"') or len(s) < 2:
            raise YAMLError('%s: unterminated string' % where)
        return json.loads(s)
    if s.startswith("'"):
        if not s.endswith("'") or len(s) < 2:
            raise YAMLError('%s: unterminated string' % where)
        return s[1:-1].replace("''", "'")
    if s in ('[]', '{}'):
        return [] if s == '[]' else {}
    if s[0] in '[{&*!|>%@`':
        raise YAMLError('%s: %r: outside the YAML subset this test reads' % (where, s))
    if s in ('null', '~', 'Null', 'NULL'):
        return None
    if s in ('true', 'True', 'TRUE'):
        return True
    if s in ('false', 'False', 'FALSE'):
        return False
    if s.lower() in ('yes', 'no', 'on', 'off', 'y', 'n'):
        raise YAMLError('%s: %r is a boolean to YAML 1.1 and a string to 1.2: quote it' % (where, s))
    if re.fullmatch(r'[-+]?(0|[1-9][0-9]*)', s):
        return int(s)
    if re.fullmatch(r'0[0-7]+', s):
        return int(s, 8)                # YAML 1.1 octal, as Kubernetes reads it
    if re.fullmatch(r'[-+]?[0-9]*\.[0-9]+', s):
        return float(s)
    if ': ' in s or s.endswith(':') or ' #' in s:
        raise YAMLError('%s: ambiguous plain scalar %r: quote it' % (where, s))
    return s


def yaml_load_all(text, name='yaml'):
    docs, cur = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.rstrip() == '---':
            docs.append(cur)
            cur = []
            continue
        if '\t' in raw[:len(raw) - len(raw.lstrip())]:
            raise YAMLError('%s:%d: tab in indentation' % (name, n))
        line = _strip_comment(raw)
        if line.strip():
            cur.append([len(line) - len(line.lstrip()), line.strip(), '%s:%d' % (name, n)])
    docs.append(cur)
    out = []
    for lines in docs:
        if not lines:
            continue
        node, i = _node(lines, 0, lines[0][0])
        if i != len(lines):
            raise YAMLError('%s: unexpected indentation' % lines[i][2])
        out.append(node)
    return out


def _is_item(t):
    return t == '-' or t.startswith('- ')


def _node(lines, i, indent):
    return (_seq if _is_item(lines[i][1]) else _map)(lines, i, indent)


def _value(lines, i, indent, val, where):
    """A key's or item's value: inline, or the block on the following lines."""
    if val:
        return _scalar(val, where), i + 1
    if i + 1 < len(lines) and (lines[i + 1][0] > indent or
                               (lines[i + 1][0] == indent and _is_item(lines[i + 1][1]))):
        return _node(lines, i + 1, lines[i + 1][0])
    return None, i + 1


def _seq(lines, i, indent):
    items = []
    while i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
        ind, text, where = lines[i]
        rest = text[1:].lstrip()
        sub = ind + (len(text) - len(rest))
        if not rest:
            node, i = _value(lines, i, ind, '', where)
        elif _is_item(rest):
            raise YAMLError('%s: nested sequence on one line' % where)
        elif _KEY.match(rest):
            lines[i] = [sub, rest, where]
            node, i = _map(lines, i, sub)
        else:
            node, i = _scalar(rest, where), i + 1
        items.append(node)
    if i < len(lines) and lines[i][0] > indent:
        raise YAMLError('%s: unexpected indentation' % lines[i][2])
    return items, i


def _map(lines, i, indent):
    m = {}
    while i < len(lines) and lines[i][0] == indent and not _is_item(lines[i][1]):
        ind, text, where = lines[i]
        mt = _KEY.match(text)
        if not mt:
            raise YAMLError('%s: expected "key: value", got %r' % (where, text))
        key = _scalar(mt.group('key'), where)
        if not isinstance(key, str):
            key = mt.group('key')
        if key in m:
            raise YAMLError('%s: duplicate key %r' % (where, key))
        m[key], i = _value(lines, i, ind, (mt.group('val') or '').strip(), where)
    if i < len(lines) and lines[i][0] > indent:
        raise YAMLError('%s: unexpected indentation' % lines[i][2])
    return m, i


def load_manifest(name):
    text = read('docker', name)
    docs = yaml_load_all(text, 'docker/' + name)
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        theirs = [d for d in yaml.safe_load_all(text) if d is not None]
        assert theirs == docs, 'docker/%s: PyYAML reads it differently:\n%r\n%r' % (name, theirs, docs)
    return docs


def _uninterpolate(s):
    """compose's ${VAR:-default} / ${VAR-default} -> default, ${VAR} -> ''."""
    return re.sub(r'\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?-)([^}]*))?\}', lambda m: m.group(1) or '', s)


def compose_mounts(service):
    """[(source, target, read_only)] of a compose service."""
    out = []
    for v in service.get('volumes') or []:
        if isinstance(v, dict):
            out.append((v.get('source'), v['target'], bool(v.get('read_only'))))
            continue
        parts = _uninterpolate(v).split(':')
        out.append((parts[0], parts[1], len(parts) > 2 and 'ro' in parts[2].split(',')))
    return out


def dockerfile_env():
    ins = dockerfile_instructions(read('docker', 'Dockerfile'))
    last = max(s for s, _, _ in ins)
    env = {}
    for s, w, a in ins:
        if s == last and w == 'ENV':
            for kv in shlex.split(a):
                k, _, v = kv.partition('=')
                env[k] = v
    return env


def duration(s):
    """Seconds in a Go/compose duration ("40s", "1m30s", "500ms") or an int."""
    if isinstance(s, (int, float)):
        return float(s)
    parts = re.findall(r'([0-9]+(?:\.[0-9]+)?)(ms|us|ns|h|m|s)', s)
    if not parts or ''.join(a + b for a, b in parts) != s:
        raise ValueError('not a duration: %r' % s)
    unit = {'h': 3600, 'm': 60, 's': 1, 'ms': 1e-3, 'us': 1e-6, 'ns': 1e-9}
    return sum(float(a) * unit[b] for a, b in parts)


def uncommented(text, pattern):
    """text with the commented-out lines whose content matches pattern
    turned on ("    # - x" -> "    - x"): the examples a user is told to
    uncomment must work when they do."""
    out, n = [], 0
    for line in text.splitlines():
        m = re.fullmatch(r'(\s*)# ?(.*)', line)
        if m and re.fullmatch(pattern, m.group(2)):
            line = m.group(1) + m.group(2)
            n += 1
        out.append(line)
    assert n, 'no commented-out line matches %r' % pattern
    return '\n'.join(out) + '\n'


def dockerfile_healthcheck():
    """({option: value}, CMD) of the runtime stage's HEALTHCHECK."""
    ins = dockerfile_instructions(read('docker', 'Dockerfile'))
    last = max(s for s, _, _ in ins)
    hc = [a for s, w, a in ins if s == last and w == 'HEALTHCHECK']
    assert len(hc) == 1, hc
    opts, cmd = hc[0].split(' CMD ', 1)
    return dict(o[2:].split('=', 1) for o in opts.split()), json.loads(cmd)


def dockerfile_args(stage):
    """{name: default} of a stage's ARG instructions."""
    ins = dockerfile_instructions(read('docker', 'Dockerfile'))
    out = {}
    for s, w, a in ins:
        if s == stage and w == 'ARG':
            k, _, v = a.partition('=')
            out[k] = shlex.split(v)[0] if v else None
    return out


def unit_stop_timeout():
    """TimeoutStopSec= of config/scopeproxy.service, in seconds."""
    stop = parse_unit(read('config', 'scopeproxy.service'))['Service']['TimeoutStopSec'][-1]
    return duration(stop if re.search(r'[a-z]$', stop) else stop + 's')


def image_paths():
    """auth_file and ca_dir as the daemon computes them inside the image."""
    env = dockerfile_env()
    r = sp('check-config', env=hermetic_env(_HOME, {k: env[k] for k in ('HOME', 'CODEX_HOME',
                                                                          'XDG_STATE_HOME')}))
    assert r.returncode == 0, r.stderr
    eff = json.loads(r.stdout)
    return os.path.dirname(eff['auth_file']), eff['ca_dir']


class EntrypointMixin:
    def entrypoint(self, *args, env=None, timeout=20, config=None):
        e = hermetic_env(_HOME, {'SCOPEPROXY_BIN': scopeproxy_bin(),
                                 'SCOPEPROXY_CONFIG': config if config is not None else self.config()})
        for k in list(e):
            if k.startswith('SCOPEPROXY_') and k not in ('SCOPEPROXY_BIN', 'SCOPEPROXY_CONFIG',
                                                          'SCOPEPROXY_SRCDIR'):
                del e[k]
        e.update(env or {})
        return run_cmd(['/bin/bash', src('docker', 'entrypoint.sh')] + list(args), env=e,
                       timeout=timeout)

    def config(self, doc=None, name='scopeproxy.json'):
        d = tempfile.mkdtemp(dir=_TMP)
        path = os.path.join(d, name)
        with open(path, 'w') as f:
            if doc is None:
                f.write(read('config', 'scopeproxy.json'))     # what the image ships
            else:
                json.dump(doc, f)
        return path

    def dry_run_with(self, env):
        """Run the entrypoint in dry-run mode with a manifest's environment,
        container paths moved under a temporary root."""
        root = tempfile.mkdtemp(dir=_TMP)
        e = {}
        for k, v in env.items():
            if k == 'SCOPEPROXY_AUTH_SOURCE':
                p = root + v
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, 'w') as f:
                    f.write('{}')
                v = p
            elif k == 'SCOPEPROXY_CA_EXPORT_DIR':
                v = root + v
                os.makedirs(v, exist_ok=True)
            e[k] = v
        e['SCOPEPROXY_DRY_RUN'] = '1'
        img = dockerfile_env()
        e['CODEX_HOME'] = root + img['CODEX_HOME']
        e['XDG_STATE_HOME'] = root + img['XDG_STATE_HOME']
        return self.entrypoint(env=e)


class Manifests(EntrypointMixin, ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.compose = load_manifest('compose.yaml')
        cls.k8s = load_manifest('k8s-sidecar.yaml')

    def test_yaml_subset_parser(self):
        docs = yaml_load_all('a: 1\nb:\n  - x\n  - k: "v"\n    j: 0400\nc:\n- 1\n---\n- []\n')
        self.assertEqual(docs, [{'a': 1, 'b': ['x', {'k': 'v', 'j': 256}], 'c': [1]}, [[]]])
        for bad in ('a: 1\na: 2\n', 'a: yes\n', 'a: &x 1\n', 'a: |\n  x\n', 'a:\n  b: 1\n c: 2\n'):
            with self.assertRaises(YAMLError, msg=bad):
                yaml_load_all(bad)

    def test_compose(self):
        self.assertEqual(len(self.compose), 1)
        c = self.compose[0]
        svc = c['services']
        self.assertEqual(set(svc), {'scopeproxy', 'agent'})
        proxy, agent = svc['scopeproxy'], svc['agent']
        port = default_port()
        codex, ca_dir = image_paths()

        self.assertEqual(proxy['build']['dockerfile'], 'docker/Dockerfile')
        self.assertTrue(os.path.samefile(os.path.join(src('docker'), proxy['build']['context']), SRCDIR))
        for k in ('HTTPS_PROXY', 'HTTP_PROXY', 'https_proxy', 'http_proxy'):
            self.assertEqual(agent['environment'][k], 'http://scopeproxy:%d' % port)
        self.assertIn('localhost', agent['environment']['NO_PROXY'])
        self.assertEqual(proxy['environment']['SCOPEPROXY_LISTEN'], '0.0.0.0:%d' % port)

        pm = {t: (s, ro) for s, t, ro in compose_mounts(proxy)}
        am = {t: (s, ro) for s, t, ro in compose_mounts(agent)}
        self.assertIn(codex, pm, 'the identity volume is not mounted at CODEX_HOME')
        self.assertIn(ca_dir, pm, 'the CA volume is not mounted at the CA dir')
        private = {pm[codex][0], pm[ca_dir][0]}
        for t, (s, ro) in am.items():
            self.assertNotIn(s, private, 'the agent mounts %s (%s)' % (s, t))
            self.assertTrue(ro, 'the agent mounts %s writable' % t)
            self.assertFalse(t.startswith('/var/lib/scopeproxy'), t)
        export = proxy['environment']['SCOPEPROXY_CA_EXPORT_DIR']
        self.assertIn(export, pm)
        shared = [t for t, (s, _) in am.items() if s == pm[export][0]]
        self.assertEqual(len(shared), 1, 'the agent does not mount the exported CA')
        self._agent_trusts(agent['environment'], shared[0])
        self.assertEqual(agent['depends_on']['scopeproxy']['condition'], 'service_healthy')

        # SCOPEPROXY_NETWORK_BOUNDARY=1 must be backed by an internal network
        # that the agent and the proxy alone share.
        self.assertEqual(proxy['environment'].get('SCOPEPROXY_NETWORK_BOUNDARY'), '1')
        for n in agent['networks']:
            self.assertTrue(c['networks'][n] and c['networks'][n].get('internal') is True,
                            'the agent is on %s, which is not internal' % n)
            self.assertEqual([s for s in svc if n in (svc[s].get('networks') or [])],
                             ['scopeproxy', 'agent'])
        self.assertNotIn('ports', proxy, 'a published port is not behind the boundary')
        r = self.dry_run_with(proxy['environment'])
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertIn(b'--allow-remote-listen', r.stdout)

    def _agent_trusts(self, env, mount):
        self.assertEqual(env['SSL_CERT_FILE'], mount + '/bundle.pem')
        self.assertEqual(env['NODE_EXTRA_CA_CERTS'], mount + '/ca.crt')
        self.assertEqual(env['CODEX_CA_CERTIFICATE'], mount + '/ca.crt')
        self.assertEqual(env.get('REQUESTS_CA_BUNDLE'), mount + '/bundle.pem')

    def test_k8s_sidecar(self):
        kinds = {d['kind']: d for d in self.k8s}
        self.assertEqual(set(kinds), {'Pod', 'NetworkPolicy'})
        pod = kinds['Pod']
        spec = pod['spec']
        port = default_port()
        codex, ca_dir = image_paths()
        containers = {c['name']: c for c in spec['containers']}
        inits = {c['name']: c for c in spec.get('initContainers', [])}
        self.assertEqual(set(containers) | set(inits), {'agent', 'scopeproxy'})
        everyone = spec['containers'] + spec.get('initContainers', [])
        volumes = {v['name']: v for v in spec['volumes']}
        proxy, agent = inits['scopeproxy'], containers['agent']

        def mounts(c):
            return {m['name']: m for m in c.get('volumeMounts', [])}

        def env(c):
            return {e['name']: e.get('value') for e in c.get('env', [])}

        # the identity: a Secret, in the scopeproxy container only
        secrets = [n for n, v in volumes.items() if 'secret' in v]
        self.assertEqual(len(secrets), 1)
        sec = volumes[secrets[0]]['secret']
        self.assertEqual(sec['defaultMode'], 0o400)
        self.assertEqual([c['name'] for c in everyone if secrets[0] in mounts(c)], ['scopeproxy'])
        sm = mounts(proxy)[secrets[0]]
        self.assertIs(sm.get('readOnly'), True)
        items = [i['path'] for i in sec.get('items', [])] or ['auth.json']
        self.assertIn(env(proxy)['SCOPEPROXY_AUTH_SOURCE'], [sm['mountPath'] + '/' + p for p in items])
        # CODEX_HOME and the CA dir: scopeproxy only; the export: read-only in the agent
        pm = {m['mountPath']: m['name'] for m in proxy['volumeMounts']}
        self.assertIn(codex, pm)
        self.assertIn(ca_dir, pm)
        self.assertIn('/etc/scopeproxy', pm)
        for name in (pm[codex], pm[ca_dir]):
            self.assertEqual([c['name'] for c in everyone if name in mounts(c)], ['scopeproxy'], name)
            self.assertIn('emptyDir', volumes[name])
        export = env(proxy)['SCOPEPROXY_CA_EXPORT_DIR']
        self.assertIn(export, pm)
        am = mounts(agent)
        self.assertEqual(set(am), {pm[export]}, 'the agent mounts more than the exported CA')
        self.assertIs(am[pm[export]].get('readOnly'), True)
        self._agent_trusts(env(agent), am[pm[export]]['mountPath'])
        for k in ('HTTPS_PROXY', 'HTTP_PROXY'):
            self.assertEqual(env(agent)[k], 'http://127.0.0.1:%d' % port)

        # probes
        self.assertEqual(proxy['readinessProbe']['httpGet'], {'path': '/readyz', 'port': port})
        self.assertEqual(proxy['livenessProbe']['httpGet'], {'path': '/healthz', 'port': port})
        self.assertEqual([p['containerPort'] for p in proxy['ports']], [port])
        # hardening
        self.assertIs(spec['securityContext']['runAsNonRoot'], True)
        self.assertIs(spec.get('automountServiceAccountToken'), False)
        for c in everyone:
            sc = c['securityContext']
            self.assertIs(sc['readOnlyRootFilesystem'], True, c['name'])
            self.assertIs(sc['allowPrivilegeEscalation'], False, c['name'])
            self.assertEqual(sc['capabilities']['drop'], ['ALL'], c['name'])
            self.assertNotIn('add', sc['capabilities'], c['name'])
            self.assertNotEqual(sc.get('runAsUser'), 0, c['name'])
        self.assertEqual(proxy['securityContext']['runAsUser'], 10001)
        self.assertEqual(spec['securityContext']['fsGroup'], 10001,
                         'without fsGroup the proxy cannot read the root-owned Secret')

        # the boundary: a NetworkPolicy that admits no ingress to this Pod
        self.assertEqual(env(proxy).get('SCOPEPROXY_NETWORK_BOUNDARY'), '1')
        np = kinds['NetworkPolicy']['spec']
        labels = pod['metadata']['labels']
        self.assertTrue(np['podSelector']['matchLabels'].items() <= labels.items())
        self.assertIn('Ingress', np['policyTypes'])
        self.assertEqual(np.get('ingress') or [], [])
        r = self.dry_run_with(env(proxy))
        self.assertEqual(r.returncode, 0, r.stderr.decode())

    def test_stop_grace_above_drain(self):
        """On SIGTERM the daemon drains for timeouts.drain seconds; a stop
        timeout below that (Docker's default is 10 s, Kubernetes' 30 s)
        SIGKILLs requests in flight. compose, the Pod and the systemd unit
        give it the same time, above the drain."""
        drain = effective_defaults()['timeouts']['drain']
        r = sp('check-config', '--config', self.config())      # the file the image ships
        self.assertEqual(r.returncode, 0, r.stderr)
        drain = max(drain, json.loads(r.stdout)['timeouts']['drain'])
        unit = unit_stop_timeout()
        self.assertGreater(unit, drain, 'TimeoutStopSec= cuts the drain short')
        proxy = self.compose[0]['services']['scopeproxy']
        self.assertIn('stop_grace_period', proxy, "compose: Docker's default 10 s cuts the drain short")
        self.assertEqual(proxy.get('stop_signal', 'SIGTERM'), 'SIGTERM')
        self.assertGreater(duration(proxy['stop_grace_period']), drain)
        self.assertEqual(duration(proxy['stop_grace_period']), unit,
                         'compose and the systemd unit disagree on the stop timeout')
        spec = [d for d in self.k8s if d['kind'] == 'Pod'][0]['spec']
        self.assertIn('terminationGracePeriodSeconds', spec,
                      "the Pod: Kubernetes' default 30 s is not above the drain")
        self.assertGreater(spec['terminationGracePeriodSeconds'], drain)
        self.assertEqual(spec['terminationGracePeriodSeconds'], unit,
                         'the Pod and the systemd unit disagree on the stop timeout')

    def test_compose_config_mount(self):
        """No named volume at /etc/scopeproxy (it would keep an old image's
        configuration across upgrades); a user's own configuration is a
        read-only bind mount, given as a commented example."""
        c = self.compose[0]
        named = set(c.get('volumes') or {})

        def config_mounts(proxy):
            return [(s, ro) for s, t, ro in compose_mounts(proxy)
                    if t == '/etc/scopeproxy' or t.startswith('/etc/scopeproxy/')]

        for s, ro in config_mounts(c['services']['scopeproxy']):
            self.assertNotIn(s, named, 'a named volume at /etc/scopeproxy outlives upgrades')
            self.assertTrue(ro and s.startswith(('.', '/')), s)
        text = uncommented(read('docker', 'compose.yaml'), r'- \S+:/etc/scopeproxy(/\S*)?:ro')
        ex = yaml_load_all(text, 'docker/compose.yaml (example uncommented)')[0]
        ms = config_mounts(ex['services']['scopeproxy'])
        self.assertEqual(len(ms), 1, ms)
        src_, ro = ms[0]
        self.assertTrue(ro)
        self.assertTrue(src_.startswith(('./', '/')), 'the example is not a bind mount: %s' % src_)
        self.assertNotIn(src_, set(ex.get('volumes') or {}))
        readme = read('docker', 'README.md')
        line = [l.split('#', 1)[1].strip() for l in read('docker', 'compose.yaml').splitlines()
                if re.fullmatch(r'\s*# ?- \S+:/etc/scopeproxy(/\S*)?:ro', l)][0]
        self.assertIn(line[2:], readme, 'docker/README.md does not show the configuration mount')
        self.assertIn('docker volume rm', readme, 'docker/README.md does not say how to drop the old volume')

    def test_compose_memlock_optional(self):
        """ulimits.memlock above the hard limit fails container creation
        under rootless Docker: it is a commented option, documented."""
        proxy = self.compose[0]['services']['scopeproxy']
        self.assertNotIn('memlock', proxy.get('ulimits') or {},
                         'memlock fails container creation on rootless hosts')
        self.assertEqual((proxy.get('ulimits') or {}).get('core'), 0)
        ex = yaml_load_all(uncommented(read('docker', 'compose.yaml'), r'memlock: .*'))[0]
        self.assertGreaterEqual(ex['services']['scopeproxy']['ulimits']['memlock'], 8 << 20)
        self.assertEqual(ex['services']['scopeproxy']['ulimits']['core'], 0)
        readme = read('docker', 'README.md')
        self.assertRegex(readme, r'(?s)memlock.{0,600}rootless|rootless.{0,600}memlock',
                         'docker/README.md does not explain the memlock option')

    def test_compose_healthcheck(self):
        """A start interval lets `depends_on: service_healthy` go on as
        soon as the proxy serves instead of one full interval later; the
        values are the image's, spelled out for engines that got an older
        image."""
        proxy = self.compose[0]['services']['scopeproxy']
        self.assertIn('healthcheck', proxy)
        hc = proxy['healthcheck']
        opts, cmd = dockerfile_healthcheck()
        self.assertEqual(hc['test'], ['CMD'] + cmd)
        for k in ('interval', 'timeout', 'start_period', 'start_interval'):
            self.assertIn(k, hc)
            self.assertEqual(duration(hc[k]), duration(opts[k.replace('_', '-')]), k)
        self.assertEqual(hc['retries'], int(opts['retries']))
        self.assertLessEqual(duration(hc['start_interval']), 2)
        self.assertGreater(duration(hc['start_period']), duration(hc['start_interval']))

    def test_k8s_native_sidecar(self):
        """The proxy is an init container with restartPolicy: Always (a
        native sidecar): the kubelet starts the agent only once its startup
        probe passes, and the entrypoint exports the CA before the daemon
        serves, so the agent needs no wait loop."""
        spec = [d for d in self.k8s if d['kind'] == 'Pod'][0]['spec']
        port = default_port()
        containers = {c['name']: c for c in spec['containers']}
        self.assertNotIn('scopeproxy', containers,
                         'as a regular container the proxy may start after the agent')
        inits = [c['name'] for c in spec.get('initContainers') or []]
        self.assertIn('scopeproxy', inits)
        proxy = spec['initContainers'][inits.index('scopeproxy')]
        self.assertEqual(proxy.get('restartPolicy'), 'Always',
                         'a plain init container has to exit before the agent starts')
        probe = proxy.get('startupProbe')
        self.assertIsNotNone(probe, 'without a startupProbe the agent starts as soon as the proxy runs')
        self.assertEqual(probe['httpGet'], {'path': '/healthz', 'port': port})
        self.assertLessEqual(probe.get('periodSeconds', 10), 2)
        self.assertGreaterEqual(probe.get('periodSeconds', 10) * probe.get('failureThreshold', 3), 20)
        self.assertEqual(proxy['readinessProbe']['httpGet'], {'path': '/readyz', 'port': port})
        self.assertEqual(proxy['livenessProbe']['httpGet'], {'path': '/healthz', 'port': port})
        self.assertNotIn('initialDelaySeconds', proxy['livenessProbe'],
                         'the startup probe already holds liveness back')
        agent = containers['agent']
        cmd = ' '.join(agent.get('command', []) + agent.get('args', []))
        self.assertNotRegex(cmd, r'ca\.crt|\buntil\b|\bwhile\b', 'the agent still polls for the CA')
        self.assertNotIn('startupProbe', agent)
        readme = read('docker', 'README.md')
        self.assertIn('restartPolicy: Always', readme)
        self.assertIn('startupProbe', readme)


# ---------------------------------------------------------------------------
# systemd unit
# ---------------------------------------------------------------------------

def parse_unit(text):
    """{section: {key: [values]}}"""
    out, sec, cur = {}, None, ''
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s[0] in '#;'):
            continue
        if s.endswith('\\'):
            cur += s[:-1] + ' '
            continue
        s, cur = cur + s, ''
        if s.startswith('[') and s.endswith(']'):
            sec = out.setdefault(s[1:-1], {})
            continue
        k, _, v = s.partition('=')
        sec.setdefault(k.strip(), []).append(v.strip())
    return out


class SystemdUnit(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = read('config', 'scopeproxy.service')
        cls.unit = parse_unit(cls.text)
        cls.svc = cls.unit['Service']

    def one(self, key):
        self.assertIn(key, self.svc, 'the unit has no %s=' % key)
        return self.svc[key][-1]

    def test_exec_start_flags_accepted(self):
        argv = shlex.split(self.one('ExecStart'))
        self.assertEqual(argv[:3], ['/usr/bin/scopeproxy', '--config', '/etc/scopeproxy/scopeproxy.json'])
        env = {}
        for e in self.svc.get('Environment', []):
            for kv in shlex.split(e):
                k, _, v = kv.partition('=')
                env[k] = v
        args = [self.config() if a == '/etc/scopeproxy/scopeproxy.json' else a for a in argv[1:]]
        r = sp('check-config', *args, env=hermetic_env(_HOME, env))
        self.assertEqual(r.returncode, 0, r.stderr)
        eff = json.loads(r.stdout)
        states = self.one('StateDirectory').split()
        self.assertIn('scopeproxy', states)
        for path in (os.path.dirname(eff['auth_file']), eff['ca_dir']):
            self.assertIn(path[len('/var/lib/'):], states,
                          '%s is not a StateDirectory= of the unit' % path)
        self.assertEqual(os.path.dirname(eff['auth_file']), '/var/lib/scopeproxy/codex')
        stop = self.one('TimeoutStopSec')
        self.assertGreater(float(stop.rstrip('s')), eff['timeouts']['drain'],
                           'TimeoutStopSec= cuts the SIGTERM drain short')

    def config(self):
        d = tempfile.mkdtemp(dir=_TMP)
        p = os.path.join(d, 'scopeproxy.json')
        shutil.copy(src('config', 'scopeproxy.json'), p)
        return p

    def test_directives(self):
        want = {
            'Type': 'simple', 'ExecReload': '/bin/kill -HUP $MAINPID',
            'NoNewPrivileges': 'yes', 'ProtectSystem': 'strict', 'ProtectHome': 'read-only',
            'PrivateTmp': 'yes', 'PrivateDevices': 'yes', 'ProtectKernelTunables': 'yes',
            'ProtectKernelModules': 'yes', 'ProtectKernelLogs': 'yes', 'LockPersonality': 'yes',
            'MemoryDenyWriteExecute': 'yes', 'LimitCORE': '0', 'LimitNOFILE': '65536',
            'CapabilityBoundingSet': '',
        }
        for k, v in want.items():
            self.assertEqual(self.one(k), v, k)
        self.assertEqual(set(self.one('RestrictAddressFamilies').split()), {'AF_INET', 'AF_INET6', 'AF_UNIX'})
        self.assertTrue(self.svc.get('User') or self.one('DynamicUser') == 'yes')
        m = re.fullmatch(r'(\d+)([KMG]?)', self.one('LimitMEMLOCK'))
        self.assertTrue(m)
        self.assertGreaterEqual(int(m.group(1)) * {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}[m.group(2)],
                                8 << 20)
        self.assertIn('man:scopeproxy(8)', self.unit['Unit']['Documentation'][0])
        self.assertIn('/readyz', self.text, 'the unit does not say how to probe readiness')

    def test_systemd_analyze(self):
        if shutil.which('systemd-analyze') is None:
            self.skipTest('systemd-analyze is not installed: unit not verified')
        d = tempfile.mkdtemp(dir=_TMP)
        unit = os.path.join(d, 'scopeproxy.service')
        with open(unit, 'w') as f:
            f.write(self.text.replace('/usr/bin/scopeproxy', scopeproxy_bin()))
        man8 = os.path.join(d, 'man', 'man8')
        os.makedirs(man8)
        shutil.copy(src('docs', 'scopeproxy.8'), man8)
        env = dict(os.environ, MANPATH=os.path.join(d, 'man'), SYSTEMD_LOG_COLOR='0')
        p = subprocess.run(['systemd-analyze', 'verify', unit], env=env, cwd=d, timeout=30,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        text = p.stdout.decode('utf-8', 'replace')
        ours = [l for l in text.splitlines() if 'scopeproxy' in l]
        self.assertEqual((p.returncode, ours), (0, []), 'systemd-analyze verify:\n' + text)
        # the exposure score, where this systemd can compute it offline
        p = subprocess.run(['systemd-analyze', 'security', '--offline=yes', '--no-pager', unit],
                           env=env, cwd=d, timeout=30, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        m = re.search(rb'Overall exposure level for \S+: ([0-9.]+)', p.stdout)
        if p.returncode == 0 and m:
            self.assertLess(float(m.group(1)), 2.5, 'systemd-analyze security: exposure went up')


# ---------------------------------------------------------------------------
# entrypoint
# ---------------------------------------------------------------------------

def wait_for_file(path, proc, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except ValueError:
                pass
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def http_get(port, path, host='127.0.0.1'):
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(('GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' % path).encode())
        data = b''
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    return int(data.split(b' ', 2)[1])


class Entrypoint(EntrypointMixin, ProxyTestCase):
    REMOTE = {'SCOPEPROXY_LISTEN': '0.0.0.0:8788', 'SCOPEPROXY_DRY_RUN': '1'}

    def test_default_is_loopback(self):
        r = self.entrypoint(env={'SCOPEPROXY_DRY_RUN': '1'})
        self.assertEqual(r.returncode, 0, r.stderr)
        cmd = shlex.split(r.stdout.decode())
        self.assertEqual(cmd[:2], ['exec', scopeproxy_bin()])
        self.assertIn('--listen', cmd)
        self.assertEqual(cmd[cmd.index('--listen') + 1], '127.0.0.1:%d' % default_port())
        self.assertNotIn('--allow-remote-listen', cmd)

    def test_refuses_remote_without_proxy_auth(self):
        for doc in (None, {'proxy_auth': None}, {'log_level': 'debug'}):
            r = self.entrypoint(env=self.REMOTE, config=self.config(doc))
            self.assertEqual(r.returncode, 2, (doc, r.stdout, r.stderr))
            err = r.stderr.decode()
            self.assertIn('refusing to listen on 0.0.0.0:8788', err)
            self.assertIn('proxy_auth', err)
            self.assertIn('SCOPEPROXY_NETWORK_BOUNDARY=1', err)
            self.assertEqual(r.stdout, b'', 'it went on to run something')
        r = self.entrypoint(env=dict(self.REMOTE, SCOPEPROXY_NETWORK_BOUNDARY='yes'))
        self.assertEqual(r.returncode, 2)
        r = self.entrypoint(env=dict(self.REMOTE, SCOPEPROXY_LISTEN='[::]:8788'))
        self.assertEqual(r.returncode, 2)

    def test_remote_with_boundary_or_proxy_auth(self):
        r = self.entrypoint(env=dict(self.REMOTE, SCOPEPROXY_NETWORK_BOUNDARY='1'))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b'--allow-remote-listen', r.stdout)
        # the daemon's own opt-in for a listener without proxy_auth
        self.assertIn(b'--allow-unauthenticated-remote', r.stdout)
        self.assertIn(b'"level":"warn"', r.stderr)
        for auth in ({'basic': 'agent:s3cret'}, {'bearer': 'tok'}):
            r = self.entrypoint('--log-level', 'debug', env=self.REMOTE,
                                config=self.config({'proxy_auth': auth}))
            self.assertEqual(r.returncode, 0, r.stderr)
            cmd = shlex.split(r.stdout.decode())
            self.assertEqual(cmd[-4:], ['0.0.0.0:8788', '--allow-remote-listen', '--log-level', 'debug'])
            self.assertNotIn(b's3cret', r.stdout + r.stderr)

    def test_listen_flags_refused(self):
        for args in (['--listen', '0.0.0.0:1'], ['-l0.0.0.0:1'], ['--listen=0.0.0.0:1'],
                     ['--allow-remote-listen'], ['--allow-unauthenticated-remote']):
            r = self.entrypoint(*args, env={'SCOPEPROXY_DRY_RUN': '1'})
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(b'SCOPEPROXY_LISTEN', r.stderr)

    def test_bad_config_is_the_daemons_error(self):
        r = self.entrypoint(env={'SCOPEPROXY_DRY_RUN': '1'}, config=self.config({'limits': {'nope': 1}}))
        self.assertEqual(r.returncode, 2)
        self.assertIn(b'limits.nope', r.stderr)

    def test_passthrough(self):
        r = self.entrypoint('--version')
        self.assertEqual((r.returncode, r.stdout), (0, sp('--version').stdout))
        r = self.entrypoint('check-config', env={'SCOPEPROXY_LISTEN': '127.0.0.2:9999'})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)['listen'], '127.0.0.2:9999')
        r = self.entrypoint('classify', 'POST', 'https://api.openai.com/v1/responses')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)['provider'], 'openai')
        state = tempfile.mkdtemp(dir=_TMP)
        r = self.entrypoint('ca', 'export', env={'XDG_STATE_HOME': state})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(b'-----BEGIN CERTIFICATE-----'))
        self.assertTrue(os.path.exists(os.path.join(state, 'scopeproxy', 'ca', 'ca.key')))

    def test_loopback_in_container_says_so(self):
        """`docker run -p 8788:8788` reaches nothing on a loopback
        listener: in a container the entrypoint says so in one line, with
        what to set."""
        port = default_port()
        dry = {'SCOPEPROXY_DRY_RUN': '1'}
        for env in ({'SCOPEPROXY_IN_CONTAINER': '1'}, {'container': 'podman'}):
            r = self.entrypoint(env=dict(env, **dry))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(r.stdout.startswith(b'exec '), r.stdout)
            lines = r.stderr.decode().splitlines()
            self.assertEqual(len(lines), 1, (env, r.stderr))
            note = json.loads(lines[0])
            self.assertEqual((note['level'], note['component']), ('warn', 'entrypoint'))
            msg = note['msg']
            self.assertIn('127.0.0.1:%d' % port, msg)
            self.assertIn('loopback', msg)
            self.assertIn('published', msg)
            self.assertIn('SCOPEPROXY_LISTEN=0.0.0.0:%d' % port, msg)
            self.assertIn('proxy_auth', msg)
            self.assertIn('SCOPEPROXY_NETWORK_BOUNDARY=1', msg)
        r = self.entrypoint(env=dict(dry, SCOPEPROXY_IN_CONTAINER='1', SCOPEPROXY_LISTEN='127.0.0.1:9999'))
        self.assertIn('SCOPEPROXY_LISTEN=0.0.0.0:9999', r.stderr.decode())
        # outside a container, or not on loopback, or not starting the daemon: nothing
        r = self.entrypoint(env=dict(dry, SCOPEPROXY_IN_CONTAINER='0', container='podman'))
        self.assertEqual((r.returncode, r.stderr), (0, b''))
        r = self.entrypoint(env=dict(dry, SCOPEPROXY_IN_CONTAINER='1', SCOPEPROXY_LISTEN='0.0.0.0:8788',
                                     SCOPEPROXY_NETWORK_BOUNDARY='1'))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(b'loopback', r.stderr)
        r = self.entrypoint('check-config', env={'SCOPEPROXY_IN_CONTAINER': '1'})
        self.assertEqual((r.returncode, r.stderr), (0, b''))
        r = self.entrypoint(env=dict(dry, SCOPEPROXY_IN_CONTAINER='yes'))
        self.assertEqual(r.returncode, 2)
        self.assertIn(b'SCOPEPROXY_IN_CONTAINER', r.stderr)

    def test_healthcheck_without_daemon_fails(self):
        r = self.entrypoint('healthcheck', env={'SCOPEPROXY_LISTEN': '127.0.0.1:%d' % free_port()})
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'healthcheck', r.stderr)

    def test_execs_daemon_with_proxy_auth(self):
        """0.0.0.0 with proxy_auth: the entrypoint copies the identity,
        exports the CA certificate, and becomes the daemon, which its
        health check then finds."""
        port = free_port()
        root = tempfile.mkdtemp(dir=_TMP)
        codex = os.path.join(root, 'codex')
        export = os.path.join(root, 'ca-public')
        os.makedirs(export)
        secret = os.path.join(root, 'secret', 'auth.json')
        os.makedirs(os.path.dirname(secret))
        with open(secret, 'w') as f:
            f.write('{"not": "an identity"}\n')
        os.chmod(secret, 0o440)
        info = os.path.join(root, 'info.json')
        cfg = self.config({'proxy_auth': {'bearer': 'tok'}})
        env = hermetic_env(_HOME, {
            'SCOPEPROXY_BIN': scopeproxy_bin(), 'SCOPEPROXY_CONFIG': cfg,
            'SCOPEPROXY_LISTEN': '0.0.0.0:%d' % port, 'SCOPEPROXY_AUTH_SOURCE': secret,
            'SCOPEPROXY_CA_EXPORT_DIR': export, 'CODEX_HOME': codex,
            'XDG_STATE_HOME': os.path.join(root, 'state')})
        log = open(os.path.join(root, 'stderr'), 'w+b')
        self.addCleanup(log.close)
        proc = subprocess.Popen(['/bin/bash', src('docker', 'entrypoint.sh'), '--server-info', info,
                                 '--drain-timeout', '1'],
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def stop():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.addCleanup(stop)

        def stderr():
            log.seek(0)
            return log.read().decode('utf-8', 'replace')[-3000:]

        si = wait_for_file(info, proc)
        self.assertIsNotNone(si, 'the daemon did not start:\n' + stderr())
        self.assertEqual(si['pid'], proc.pid, 'the entrypoint did not exec the daemon')
        self.assertEqual(si['port'], port)
        self.assertEqual(http_get(port, '/healthz'), 200)
        self.assertEqual(http_get(port, '/readyz'), 503)    # not an identity: fails closed

        r = self.entrypoint('healthcheck', env={k: v for k, v in env.items() if k.startswith(
            ('SCOPEPROXY_', 'CODEX_HOME', 'XDG_'))}, config=cfg)
        self.assertEqual(r.returncode, 0, r.stderr)

        # the identity copy: owner-only, same content; the source untouched
        dst = os.path.join(codex, 'auth.json')
        self.assertEqual(os.stat(dst).st_mode & 0o777, 0o600)
        with open(dst) as a, open(secret) as b:
            self.assertEqual(a.read(), b.read())
        # the CA export: certificate and bundle, never the key
        self.assertEqual(sorted(os.listdir(export)), ['bundle.pem', 'ca.crt'])
        ca_dir = os.path.join(root, 'state', 'scopeproxy', 'ca')
        self.assertTrue(os.path.exists(os.path.join(ca_dir, 'ca.key')))
        with open(os.path.join(export, 'ca.crt')) as f:
            crt = f.read()
        self.assertTrue(crt.startswith('-----BEGIN CERTIFICATE-----'))
        with open(os.path.join(ca_dir, 'ca.crt')) as f:
            self.assertEqual(f.read(), crt)
        with open(os.path.join(export, 'bundle.pem')) as f:
            bundle = f.read()
        self.assertTrue(bundle.endswith(crt))
        self.assertNotIn('PRIVATE KEY', bundle)

        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(15), 0, stderr())

        # a second start keeps the (possibly updated) copy
        with open(dst, 'w') as f:
            f.write('{"kept": true}\n')
        r = self.entrypoint(env={'SCOPEPROXY_AUTH_SOURCE': secret, 'CODEX_HOME': codex,
                                 'SCOPEPROXY_DRY_RUN': '1'})
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(dst) as f:
            self.assertEqual(f.read(), '{"kept": true}\n')


if __name__ == '__main__':
    atexit.register(_cleanup_tmp)
    main()
