package activation

import "os"

// Environment variables the generated worker units set (see doc.go).
const (
	EnvGroup    = "POWERHOUSE_GROUP"    // the group, e.g. "web"
	EnvInstance = "POWERHOUSE_INSTANCE" // the instance, the %i of powerhouse-web@%i.service
	EnvConfig   = "POWERHOUSE_CONFIG"   // path of the group's JSON configuration
)

// IsWorker reports whether this process runs as a PowerHouse worker
// instance: both POWERHOUSE_GROUP and POWERHOUSE_INSTANCE are set. It is the
// seed's isWorker(); outside PowerHouse it is false.
func IsWorker() bool {
	return os.Getenv(EnvGroup) != "" && os.Getenv(EnvInstance) != ""
}

// Group returns the worker's group name ($POWERHOUSE_GROUP), or "" outside
// PowerHouse.
func Group() string { return os.Getenv(EnvGroup) }

// Instance returns the worker's instance name ($POWERHOUSE_INSTANCE, "1",
// "2", …), or "" outside PowerHouse.
func Instance() string { return os.Getenv(EnvInstance) }
