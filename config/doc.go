// Package config reads a PowerHouse configuration (TOML) into validated,
// typed values. Decoding is strict: unknown keys, wrong types and values
// that could not be written safely into a unit file are errors, and every
// problem of a file is reported at once with its line and key.
//
// It also edits a configuration file in place, one line at a time, for
// `powerhouse set` and `powerhouse scale`: comments and layout survive.
package config
