#!/bin/sh
# TEST PROFILE ONLY: functions shared by the stand-in kubeadm
# (/usr/local/bin/kubeadm) and its stand-in API server
# (/usr/lib/piha/test/apiserver). Sourced, never run. The image has no
# python3, curl or jq, so YAML, JSON, base64url and the JWS are done with
# awk, sed and the openssl CLI.
#
# Callers set: root (PIHA_TEST_ROOT or ""), k8s ($root/etc/kubernetes) and
# dir ($root/var/lib/piha-test).

# Says what went wrong on stderr and exits 1. `outcome` is what the stand-in
# kubeadm records for the call.
die() {
	# shellcheck disable=SC2034 # read by the stand-in kubeadm's EXIT trap
	outcome=$*
	printf '%s\n' "$*" >&2
	exit 1
}

# yaml_flat FILE: every scalar of the kubeadm config as `path=value`, one a
# line (`discovery.bootstrapToken.token=abcdef.0123456789abcdef`; a list's
# items repeat their path). Enough YAML for what piha renders: block
# mappings and lists, plain or quoted scalars. The paths piha reads are
# unique across the file's documents, so documents are not told apart.
yaml_flat() {
	awk -v q="'" '
	function unquote(s) {
		if (length(s) >= 2 && (substr(s, 1, 1) == "\"" || substr(s, 1, 1) == q) && substr(s, length(s), 1) == substr(s, 1, 1))
			return substr(s, 2, length(s) - 2)
		return s
	}
	/^---/ { d = 0; next }
	/^[ \t]*(#|$)/ { next }
	{
		match($0, /^ */); ind = RLENGTH; s = substr($0, ind + 1)
		if (s ~ /^- /) { ind += 2; s = substr(s, 3) }
		while (d > 0 && lvl[d] >= ind) d--
		path = ""
		for (i = 1; i <= d; i++) path = path key[i] "."
		if (match(s, /^[^ :]+:( |$)/)) {
			k = substr(s, 1, index(s, ":") - 1)
			v = substr(s, RLENGTH + 1); sub(/^ +/, "", v); sub(/ +$/, "", v)
			if (v == "") { d++; key[d] = k; lvl[d] = ind }
			else print path k "=" unquote(v)
		} else {
			sub(/ +$/, "", s)
			print substr(path, 1, length(path) - 1) "=" unquote(s)
		}
	}' "$1"
}

# cfg_get PATH / cfg_all PATH: the first / every value at PATH in $flat
# (yaml_flat's output).
cfg_get() {
	printf '%s\n' "$flat" | awk -v k="$1=" 'index($0, k) == 1 { print substr($0, length(k) + 1); exit }'
}
cfg_all() {
	printf '%s\n' "$flat" | awk -v k="$1=" 'index($0, k) == 1 { print substr($0, length(k) + 1) }'
}

# base64url without padding (RFC 7515 section 2) of stdin.
b64url() {
	openssl base64 -A | tr '+/' '-_' | tr -d '=\n'
}

# jws_detached ID SECRET FILE: what Kubernetes' bootstrap signer puts in
# cluster-info as jws-kubeconfig-ID (k8s.io/cluster-bootstrap/token/jws
# ComputeDetachedSignature): a compact JWS, HS256 keyed with the token
# secret, protected header {"alg":"HS256","kid":ID}, over FILE's bytes, with
# the payload left out: header..signature.
jws_detached() {
	jws_h=$(printf '{"alg":"HS256","kid":"%s"}' "$1" | b64url)
	jws_p=$(b64url <"$3")
	jws_s=$(printf '%s.%s' "$jws_h" "$jws_p" | openssl dgst -sha256 -mac HMAC -macopt "key:$2" -binary | b64url)
	printf '%s..%s' "$jws_h" "$jws_s"
}

# json_escape FILE: FILE's text as the inside of a JSON string. FILE ends
# with a newline (every file this is used on does).
json_escape() {
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/	/\\t/g' "$1" | awk '{ printf "%s\\n", $0 }'
}

# json_get KEY <JSON: the unescaped string value of the first member named
# KEY, byte for byte (\n \t \" \\ \/ and ASCII \uXXXX, as Go's encoding/json
# writes them); exits 1 when there is none.
json_get() {
	awk -v want="$1" '
	function hexval(h,   i, v) {
		v = 0
		for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", tolower(substr(h, i, 1))) - 1
		return v
	}
	{ s = s $0 "\n" }
	END {
		n = length(s); i = 1; pending = 0; key = ""
		while (i <= n) {
			c = substr(s, i, 1)
			if (c != "\"") {
				if (c == ":") pending = 1
				else if (c !~ /[ \t\r\n]/) pending = 0
				i++
				continue
			}
			out = ""; i++
			while (i <= n) {
				c = substr(s, i, 1)
				if (c == "\\") {
					e = substr(s, i + 1, 1); i += 2
					if (e == "n") out = out "\n"
					else if (e == "t") out = out "\t"
					else if (e == "r") out = out "\r"
					else if (e == "b") out = out "\b"
					else if (e == "f") out = out "\f"
					else if (e == "u") {
						v = hexval(substr(s, i, 4)); i += 4
						if (v < 1 || v > 127) exit 2
						out = out sprintf("%c", v)
					} else out = out e
					continue
				}
				i++
				if (c == "\"") break
				out = out c
			}
			j = i
			while (j <= n && substr(s, j, 1) ~ /[ \t\r\n]/) j++
			if (substr(s, j, 1) == ":") { key = out; continue }
			if (pending && key == want) { printf "%s", out; found = 1; exit }
			pending = 0
		}
	}
	END { exit found ? 0 : 1 }'
}

# ca_hash CERT: kubeadm's discovery pin of a CA, sha256: and the hex SHA-256
# of the certificate's DER SubjectPublicKeyInfo.
ca_hash() {
	ca_h=$(openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum)
	printf 'sha256:%s' "${ca_h%% *}"
}

# fetch HOST:PORT PATH [CAFILE]: the HTTP response (headers and body) for
# GET PATH over TLS. Without CAFILE the server is not trusted (discovery's
# first fetch); with it, the server's certificate must chain to CAFILE and
# name HOST. HTTP/1.0, so the answer is never chunked; 10 s at most.
fetch() {
	fetch_to=$1
	fetch_path=$2
	fetch_ca=${3:-}
	fetch_host=${fetch_to%:*}
	set --
	if [ -n "$fetch_ca" ]; then
		case "$fetch_host" in
		*[!0-9.]*) set -- -verify_hostname "$fetch_host" ;;
		*) set -- -verify_ip "$fetch_host" ;;
		esac
		set -- "$@" -CAfile "$fetch_ca" -verify_return_error
	fi
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\nAccept: application/json\r\nUser-Agent: piha-test-kubeadm\r\n\r\n' "$fetch_path" "$fetch_to" |
		timeout 10 openssl s_client -quiet -noservername -connect "$fetch_to" "$@" 2>"${fetch_err:-/dev/null}"
}

# http_status / http_body <RESPONSE: the status code; the body.
http_status() {
	head -n 1 | awk '{ print $2 }'
}
http_body() {
	awk 'body { print; next } /^\r?$/ { body = 1 }'
}

# discover CONFIG OUT_CA: kubeadm's bootstrap-token discovery
# (https://kubernetes.io/docs/reference/setup-tools/kubeadm/kubeadm-join/#token-based-discovery-with-ca-pinning):
# fetch kube-public/cluster-info from discovery.bootstrapToken.apiServerEndpoint
# without trusting the server, check its jws-kubeconfig-<token id> against
# the token secret, check the CA in its kubeconfig against caCertHashes,
# then fetch it again trusting only that CA. Unreachable or not yet signed:
# tried again every $PIHA_TEST_DISCOVERY_INTERVAL s (2) for
# $PIHA_TEST_DISCOVERY_TIMEOUT s (300), as kubeadm's discovery retries. A
# signature or hash that does not match fails at once. The CA goes to OUT_CA.
discover() {
	flat=$(yaml_flat "$1")
	endpoint=$(cfg_get discovery.bootstrapToken.apiServerEndpoint)
	token=$(cfg_get discovery.bootstrapToken.token)
	hashes=$(cfg_all discovery.bootstrapToken.caCertHashes)
	case "$token" in ??????.????????????????) ;; *) die "kubeadm join: discovery.bootstrapToken.token in $1 is not a bootstrap token" ;; esac
	[ -n "$endpoint" ] || die "kubeadm join: no discovery.bootstrapToken.apiServerEndpoint in $1"
	[ -n "$hashes" ] || die "kubeadm join: no discovery.bootstrapToken.caCertHashes in $1 (the stand-in never skips CA verification)"
	id=${token%%.*}
	path=/api/v1/namespaces/kube-public/configmaps/cluster-info
	d_tmp=$(mktemp -d)
	interval=${PIHA_TEST_DISCOVERY_INTERVAL:-2}
	deadline=$(($(date +%s) + ${PIHA_TEST_DISCOVERY_TIMEOUT:-300}))
	while :; do
		if ! fetch "$endpoint" "$path" >"$d_tmp/response"; then
			why="no TLS connection to $endpoint"
		elif [ "$(http_status <"$d_tmp/response")" != 200 ]; then
			why="GET https://$endpoint$path answered $(head -n 1 "$d_tmp/response" | tr -d '\r')"
		else
			http_body <"$d_tmp/response" >"$d_tmp/body"
			if ! json_get kubeconfig <"$d_tmp/body" >"$d_tmp/kubeconfig"; then
				why="cluster-info from $endpoint has no kubeconfig"
			elif ! json_get "jws-kubeconfig-$id" <"$d_tmp/body" >"$d_tmp/jws"; then
				# Real clusters sign a new token a moment after it is created.
				why="cluster-info from $endpoint has no JWS for token id $id yet"
			else
				break
			fi
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			rm -rf "$d_tmp"
			die "kubeadm join: DISCOVERY FAILED: could not get cluster-info within ${PIHA_TEST_DISCOVERY_TIMEOUT:-300} s: $why"
		fi
		echo "kubeadm join: $why; trying again in $interval s" >&2
		sleep "$interval"
	done

	want=$(jws_detached "$id" "${token#*.}" "$d_tmp/kubeconfig")
	got=$(cat "$d_tmp/jws")
	if [ "$got" != "$want" ]; then
		rm -rf "$d_tmp"
		die "kubeadm join: DISCOVERY FAILED: JWS MISMATCH: cluster-info's jws-kubeconfig-$id from $endpoint is not signed with this token's secret (got $got): wrong bootstrap token secret, or not this cluster's API server"
	fi
	if [ "$(grep -c '^ *certificate-authority-data: ' "$d_tmp/kubeconfig")" != 1 ]; then
		rm -rf "$d_tmp"
		die "kubeadm join: DISCOVERY FAILED: cluster-info's kubeconfig from $endpoint does not hold exactly one cluster CA"
	fi
	sed -n 's/^ *certificate-authority-data: *//p' "$d_tmp/kubeconfig" | openssl base64 -d -A >"$d_tmp/ca.crt"
	if ! openssl x509 -in "$d_tmp/ca.crt" -noout 2>/dev/null; then
		rm -rf "$d_tmp"
		die "kubeadm join: DISCOVERY FAILED: the CA in cluster-info's kubeconfig from $endpoint is not a certificate"
	fi
	actual=$(ca_hash "$d_tmp/ca.crt")
	if ! printf '%s\n' "$hashes" | grep -qixF "$actual"; then
		rm -rf "$d_tmp"
		die "kubeadm join: DISCOVERY FAILED: CA HASH MISMATCH: the cluster CA from $endpoint has public key hash $actual, which matches none of discovery.bootstrapToken.caCertHashes ($(printf '%s' "$hashes" | tr '\n' ' ')) in $1"
	fi

	# kubeadm's second look: the same cluster-info, now over TLS that only
	# this CA can vouch for, with the endpoint's address in the certificate.
	# Tried again, as kubeadm does, while nothing answers (a director may have
	# just dropped the server that answered the first look); a certificate
	# that does not verify, or a different cluster-info, fails at once.
	while :; do
		if fetch_err="$d_tmp/tls2" fetch "$endpoint" "$path" "$d_tmp/ca.crt" >"$d_tmp/response2" &&
			[ "$(http_status <"$d_tmp/response2")" = 200 ]; then
			if http_body <"$d_tmp/response2" | json_get kubeconfig >"$d_tmp/kubeconfig2" &&
				cmp -s "$d_tmp/kubeconfig" "$d_tmp/kubeconfig2"; then
				break
			fi
			rm -rf "$d_tmp"
			die "kubeadm join: DISCOVERY FAILED: $endpoint served a different cluster-info over TLS verified by the discovered cluster CA"
		fi
		if grep -q 'verify' "$d_tmp/tls2"; then
			why=$(grep -m 1 'verify' "$d_tmp/tls2")
			rm -rf "$d_tmp"
			die "kubeadm join: DISCOVERY FAILED: TLS MISMATCH: $endpoint's serving certificate does not verify against the discovered cluster CA for ${endpoint%:*} ($why)"
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			rm -rf "$d_tmp"
			die "kubeadm join: DISCOVERY FAILED: no verified answer from $endpoint within ${PIHA_TEST_DISCOVERY_TIMEOUT:-300} s"
		fi
		echo "kubeadm join: no verified answer from $endpoint yet; trying again in $interval s" >&2
		sleep "$interval"
	done
	mkdir -p "$(dirname "$2")"
	cp "$d_tmp/ca.crt" "$2"
	rm -rf "$d_tmp"
	echo "kubeadm join: discovery against $endpoint: JWS for token id $id and CA hash $actual verified" >&2
}
