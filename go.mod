module github.com/powerhouse/powerhouse

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/godbus/dbus/v5 v5.2.4
	golang.org/x/sys v0.50.0
)

require github.com/cilium/ebpf v0.22.0
