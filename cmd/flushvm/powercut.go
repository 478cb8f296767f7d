package main

import (
	"github.com/flushvm/flushvm/protocol"
)

// exitPowerCut is flushvm run's exit status after a power cut (by
// --power-cut or the API's POST /power-cut), as package protocol declares.
const exitPowerCut = protocol.ExitPowerCut
