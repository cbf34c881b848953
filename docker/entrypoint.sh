#!/bin/bash
# scopeproxy container entrypoint (installed as /usr/local/bin/scopeproxy-entrypoint).
#
#   scopeproxy-entrypoint [FLAG...]          run the proxy (the default)
#   scopeproxy-entrypoint check-config|classify|ca ARG...
#                                            that subcommand, with the same
#                                            configuration the proxy would use
#   scopeproxy-entrypoint --version | --help
#   scopeproxy-entrypoint healthcheck        exit 0 when GET /healthz answers 200
#                                            (the image's HEALTHCHECK)
#   scopeproxy-entrypoint COMMAND ARG...     any other command, e.g. bash
#
# Listening rules (see docker/README.md):
#   - the proxy listens on 127.0.0.1:8788 unless SCOPEPROXY_LISTEN says
#     otherwise; --listen/-l/--allow-remote-listen/--allow-unauthenticated-remote
#     are refused as flags so that this is the only way to change it;
#   - a non-loopback SCOPEPROXY_LISTEN (e.g. 0.0.0.0:8788) adds
#     --allow-remote-listen, and is refused (exit 2) unless the effective
#     configuration has proxy authentication ("proxy_auth") or
#     SCOPEPROXY_NETWORK_BOUNDARY=1 states that only the agent can reach
#     the port (which adds --allow-unauthenticated-remote, the daemon's
#     own opt-in for that).
#
# Environment:
#   SCOPEPROXY_LISTEN            ADDR:PORT (default 127.0.0.1:8788)
#   SCOPEPROXY_NETWORK_BOUNDARY  1: allow a non-loopback listener without proxy_auth
#   SCOPEPROXY_IN_CONTAINER      1 or 0: whether this runs in a container (default:
#                                detected). In one, a loopback listener gets a
#                                warning that a published port cannot reach it;
#                                0 silences it (e.g. --network container:...)
#   SCOPEPROXY_CONFIG            configuration file, used when it exists
#                                (default /etc/scopeproxy/scopeproxy.json; empty: none)
#   SCOPEPROXY_AUTH_SOURCE       copy this file (e.g. a mounted Secret) to the
#                                effective auth_file, mode 0600, unless that
#                                file exists already
#   SCOPEPROXY_CA_EXPORT_DIR     before starting, write the interception CA's
#                                certificate (ca.crt) and a bundle of the system
#                                roots plus it (bundle.pem) there; never the key
#   SCOPEPROXY_BIN               the daemon (default /usr/bin/scopeproxy)
#   SCOPEPROXY_DRY_RUN           1: check everything, print the command that
#                                would run, change nothing, exit 0
set -euo pipefail

prog=scopeproxy-entrypoint
bin=${SCOPEPROXY_BIN:-/usr/bin/scopeproxy}
config=${SCOPEPROXY_CONFIG-/etc/scopeproxy/scopeproxy.json}
listen=${SCOPEPROXY_LISTEN:-127.0.0.1:8788}
boundary=${SCOPEPROXY_NETWORK_BOUNDARY:-0}
dry_run=${SCOPEPROXY_DRY_RUN:-0}
in_container=${SCOPEPROXY_IN_CONTAINER:-}

die() {		# die STATUS MESSAGE
	echo "$prog: error: $2" >&2
	exit "$1"
}

# A JSON log line on stderr, like the daemon's own.
note() {	# note LEVEL MESSAGE
	local m=$2
	m=${m//\\/\\\\}
	m=${m//\"/\\\"}
	printf '{"time":"%s","level":"%s","msg":"%s","component":"entrypoint"}\n' \
	    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" "$m" >&2
}

# The value of a top-level string key in check-config's output (indent 2).
effective_string() {	# effective_string JSON KEY
	sed -n "s/^  \"$2\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" <<<"$1"
}

case $boundary in
0|1) ;;
*) die 2 "SCOPEPROXY_NETWORK_BOUNDARY must be 0 or 1, not '$boundary'" ;;
esac

case $in_container in
0|1) ;;
'')
	# Docker, Podman, a container manager that sets $container, Kubernetes.
	if [ -e /.dockerenv ] || [ -e /run/.containerenv ] ||
	    [ -n "${container:-}" ] || [ -n "${KUBERNETES_SERVICE_HOST:-}" ]; then
		in_container=1
	else
		in_container=0
	fi ;;
*) die 2 "SCOPEPROXY_IN_CONTAINER must be 0 or 1, not '$in_container'" ;;
esac

loopback=0
case $listen in
127.*:*|'[::1]':*) loopback=1 ;;
esac

# The arguments every invocation shares: configuration file and listener.
base=()
if [ -n "$config" ] && [ -e "$config" ]; then
	base+=(--config "$config")
fi
base+=(--listen "$listen")
if [ "$loopback" = 0 ]; then
	base+=(--allow-remote-listen)
	[ "$boundary" = 0 ] || base+=(--allow-unauthenticated-remote)
fi

healthcheck() {
	local eff addr host port status

	eff=$("$bin" check-config "${base[@]}" 2>/dev/null) || {
		echo "$prog: healthcheck: the configuration does not load" >&2
		exit 1
	}
	addr=$(effective_string "$eff" listen)
	host=${addr%:*}
	port=${addr##*:}
	case $host in
	0.0.0.0) host=127.0.0.1 ;;
	'[::]') host=::1 ;;
	'['*']') host=${host#[}; host=${host%]} ;;
	esac
	if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
		echo "$prog: healthcheck: cannot connect to $addr" >&2
		exit 1
	fi
	printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
	if ! IFS= read -r -t 5 status <&3; then
		echo "$prog: healthcheck: no answer from $addr" >&2
		exit 1
	fi
	exec 3<&-
	case $status in
	'HTTP/1.'?' 200 '*) exit 0 ;;
	esac
	echo "$prog: healthcheck: /healthz answered: ${status%$'\r'}" >&2
	exit 1
}

case ${1:-} in
healthcheck)
	healthcheck ;;
check-config|classify|ca)
	sub=$1
	shift
	exec "$bin" "$sub" "${base[@]}" "$@" ;;
-h|--help|-V|--version)
	exec "$bin" "$@" ;;
''|-*)
	;;
*)
	exec "$@" ;;
esac

# --- run the proxy ---------------------------------------------------------

for a in "$@"; do
	case $a in
	-l*|--listen|--listen=*|--allow-remote-listen|--allow-unauthenticated-remote)
		die 2 "'$a': set SCOPEPROXY_LISTEN instead (docker/README.md explains the rules)" ;;
	esac
done
args=("${base[@]}" "$@")

# The daemon validates everything; its message names the key at fault.
# A non-loopback listener without proxy_auth it refuses too, unless
# allowed: ask it about everything else first, so that the refusal
# below can name the container's way out.
if [ "$loopback" = 0 ] && [ "$boundary" = 0 ]; then
	eff=$("$bin" check-config "${args[@]}" --allow-unauthenticated-remote) || exit $?
else
	eff=$("$bin" check-config "${args[@]}") || exit $?
fi

if [ "$loopback" = 0 ]; then
	if grep -q '^  "proxy_auth": null' <<<"$eff"; then
		if [ "$boundary" != 1 ]; then
			die 2 "refusing to listen on $listen without proxy authentication: \
anything that can reach this port could use the agent identity. Either configure \
\"proxy_auth\" ({\"basic\": \"user:password\"} or {\"bearer\": \"token\"}) in \
${config:-the configuration file}, or set SCOPEPROXY_NETWORK_BOUNDARY=1 if only \
the agent can reach this port (a pod-local sidecar behind a NetworkPolicy, an \
internal network shared with the agent alone)"
		fi
		note warn "listening on $listen without proxy authentication: SCOPEPROXY_NETWORK_BOUNDARY=1 says only the agent can reach this port"
	fi
elif [ "$in_container" = 1 ]; then
	# docker run -p 8788:8788 forwards to the container's own address,
	# where nothing listens: say so once instead of refusing connections.
	note warn "listening on $listen, a loopback address inside a container: \
a published port (docker run -p) or another container cannot reach it, only \
processes sharing this container's network namespace can; to accept them set \
SCOPEPROXY_LISTEN=0.0.0.0:${listen##*:} and either configure \"proxy_auth\" or \
set SCOPEPROXY_NETWORK_BOUNDARY=1 (docker/README.md)"
fi

# A Secret mounted read-only is owned by root (group-readable with fsGroup);
# the daemon wants an owner-only file it may also update (run task).
if [ -n "${SCOPEPROXY_AUTH_SOURCE:-}" ]; then
	dst=$(effective_string "$eff" auth_file)
	[ -n "$dst" ] || die 2 "SCOPEPROXY_AUTH_SOURCE is set but the configuration names no auth_file"
	if [ -e "$dst" ]; then
		note info "$dst exists; not copying SCOPEPROXY_AUTH_SOURCE over it"
	elif [ ! -r "$SCOPEPROXY_AUTH_SOURCE" ]; then
		die 1 "SCOPEPROXY_AUTH_SOURCE: cannot read $SCOPEPROXY_AUTH_SOURCE"
	elif [ "$dry_run" = 1 ]; then
		note info "would copy $SCOPEPROXY_AUTH_SOURCE to $dst (mode 0600)"
	else
		if ! (umask 077 && mkdir -p -- "$(dirname -- "$dst")" &&
		    cat -- "$SCOPEPROXY_AUTH_SOURCE" >"$dst.tmp.$$" &&
		    mv -f -- "$dst.tmp.$$" "$dst"); then
			rm -f -- "$dst.tmp.$$"
			die 1 "cannot copy the auth file to $dst"
		fi
		note info "copied $SCOPEPROXY_AUTH_SOURCE to $dst"
	fi
fi

# The agent trusts ca.crt; it never sees ca.key, which stays in ca_dir.
if [ -n "${SCOPEPROXY_CA_EXPORT_DIR:-}" ] && ! grep -q '^  "intercept": false' <<<"$eff"; then
	out=$SCOPEPROXY_CA_EXPORT_DIR
	if [ "$dry_run" = 1 ]; then
		note info "would export the interception CA certificate to $out"
	else
		if [ ! -d "$out" ] || [ ! -w "$out" ]; then
			die 1 "SCOPEPROXY_CA_EXPORT_DIR: $out is not a writable directory"
		fi
		"$bin" ca export "${args[@]}" >"$out/ca.crt.tmp.$$" ||
		    { rm -f -- "$out/ca.crt.tmp.$$"; die 1 "cannot export the CA certificate"; }
		{ cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true
		  cat "$out/ca.crt.tmp.$$"; } >"$out/bundle.pem.tmp.$$"
		chmod 0644 "$out/ca.crt.tmp.$$" "$out/bundle.pem.tmp.$$"
		mv -f -- "$out/ca.crt.tmp.$$" "$out/ca.crt"
		mv -f -- "$out/bundle.pem.tmp.$$" "$out/bundle.pem"
		note info "exported the interception CA certificate to $out/ca.crt"
	fi
fi

if [ "$dry_run" = 1 ]; then
	printf 'exec'
	printf ' %q' "$bin" "${args[@]}"
	printf '\n'
	exit 0
fi
exec "$bin" "${args[@]}"
