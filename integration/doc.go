// Package integration holds the tests that boot real Linux guests (Debian's
// generic kernel with flushvm's test initramfs) under flushvm, through the
// same harness `make run` uses: directly on a host with hardware
// virtualization, nested inside a QEMU TCG L1 guest otherwise. Every guest
// boot is named in the test log. Runs share one L1 boot per test function
// where they can, since a nested boot costs tens of seconds.
package integration
