package protocol

// ModuleList is where flushvm's initramfs images list the kernel modules
// their init loads at boot: one path per line, in load order (the host's
// image builder writes it, the guest's init reads it).
const ModuleList = "/etc/flushvm/modules"

// ModuleSetList is where an image lists, in the same form, the modules of
// set name that its init loads only on demand: the modules of a file
// system (protocol.FileSystems) the crash-test modes format and mount.
func ModuleSetList(name string) string { return ModuleList + "-" + name }
