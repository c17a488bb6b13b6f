# shellcheck shell=sh
# What the realServer (realserver) and its health endpoint (apicheck) share,
# sourced by both: one definition of a valid VIP and of "the VIP is on lo".

# Four decimal octets 0-255 without leading zeros: `ip` would read "10.0.2"
# as 10.0.0.2 and "010.0.0.1" as octal.
is_ipv4() {
	case "$1" in
	'' | *[!0-9.]* | *..* | .* | *.) return 1 ;;
	esac
	saved_ifs=$IFS
	IFS=.
	# shellcheck disable=SC2086 # split on dots on purpose; only digits and dots remain
	set -- $1
	IFS=$saved_ifs
	[ $# -eq 4 ] || return 1
	for octet in "$@"; do
		case "$octet" in 0?*) return 1 ;; esac
		[ ${#octet} -le 3 ] && [ "$octet" -le 255 ] || return 1
	done
}

# Whether $VIP is on lo as /32, as the realServer puts it there.
vip_on_lo() {
	case "$(ip -o -4 addr show dev lo)" in
	*" inet $VIP/32 "*) return 0 ;;
	*) return 1 ;;
	esac
}
