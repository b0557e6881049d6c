// Package units installs generated unit files and drives systemd's manager
// over D-Bus for the supervisor and the CLI.
package units
