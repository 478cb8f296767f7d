package vmm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/protocol"
	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// DebugExitPort is the I/O port a guest writes one byte v to, to end the
// machine with exit status v.
const DebugExitPort = portDebugExit

// MaxCPUs is the largest vCPU count the machine supports (MP table APIC IDs).
const MaxCPUs = 64

// Config describes a machine.
type Config struct {
	// Kernel is the bzImage or ELF vmlinux; Initrd (optional, nil for
	// none) the initial ramdisk. New reads both straight into guest
	// memory and keeps no reference to them.
	Kernel Image
	Initrd Image
	// Cmdline is the kernel command line.
	Cmdline string
	// MemSize is the guest RAM size in bytes.
	MemSize uint64
	// CPUs is the number of vCPUs (1-MaxCPUs).
	CPUs int
	// Devices are attached as PCI functions at devices 1, 2, ... in order.
	Devices []virtio.Device
	// Console is the input for the serial port (nil: none). A terminal is
	// put in raw mode while the machine runs.
	Console *os.File
	// Output receives the serial port's output (nil: discarded).
	Output io.Writer
	// Diag receives diagnostics about fatal guest exits (nil: os.Stderr).
	Diag io.Writer
	// Debug makes the machine log why it stops to Diag.
	Debug bool
	// Watchdog, when positive, ends the machine with ExitGuestHang when a
	// vCPU makes no progress with an interrupt pending for that long (see
	// watchdog.go). Zero turns it off.
	Watchdog time.Duration
	// ConsoleLine, when set, is called with every line the guest
	// transmits on the serial port, without its "\n" (or "\r\n"), and at
	// most MaxConsoleLine bytes of it (the rest of a longer line is
	// dropped). It runs synchronously on the vCPU thread whose OUT to the
	// transmit register ended the line, before that instruction returns
	// to the guest, and without the serial port's lock held: whatever it
	// does has happened before the guest prints anything more. It must
	// not keep line after returning and should be quick, since the vCPU
	// waits for it.
	ConsoleLine func(line []byte)
}

// ExitKind tells why a machine stopped.
type ExitKind int

// The ways a machine stops.
const (
	// ExitReboot: the guest rebooted or reset the machine through the
	// keyboard controller or the reset register at port 0xcf9 (status 0).
	ExitReboot ExitKind = iota
	// ExitDebugPort: the guest wrote its status to DebugExitPort.
	ExitDebugPort
	// ExitQuit: the console user typed Ctrl-A x, or Stop was called.
	ExitQuit
	// ExitError: a vCPU hit an exit the machine cannot continue from.
	ExitError
	// ExitPowerOff: the guest powered the machine off through ACPI (S5)
	// (status 0).
	ExitPowerOff
	// ExitGuestCrash: a vCPU triple-faulted or the guest kernel
	// reported a panic through the pvpanic device (status
	// protocol.ExitGuestCrash); a report line went to Config.Diag.
	ExitGuestCrash
	// ExitGuestHang: the watchdog found a stalled vCPU (status
	// protocol.ExitGuestHang); a report line went to Config.Diag.
	ExitGuestHang
)

var exitKindNames = [...]string{"reboot", "debug-port", "quit", "error", "power-off", "guest-crash", "guest-hang"}

// String names the kind, e.g. "guest-crash".
func (k ExitKind) String() string {
	if k >= 0 && int(k) < len(exitKindNames) {
		return exitKindNames[k]
	}
	return fmt.Sprintf("ExitKind(%d)", int(k))
}

// ErrGuestCrashed and ErrGuestHung are wrapped by Result.Err of
// ExitGuestCrash and ExitGuestHang.
var (
	ErrGuestCrashed = errors.New("guest crashed")
	ErrGuestHung    = errors.New("guest hung")
)

// Result is how a machine ended.
type Result struct {
	Kind   ExitKind
	Status int
	// Err is set for ExitError, ExitGuestCrash and ExitGuestHang.
	Err error
}

// Machine is a configured virtual machine. Create with New, run once with
// Run, release with Close.
type Machine struct {
	sys    *kvm.System
	vm     *kvm.VM
	ram    *guestRAM
	vcpus  []*kvm.VCPU
	bus    *pciBus
	router *irqRouter
	serial *serial
	cmos   *cmos
	pm     *pmRegs
	cons   *console
	diag   io.Writer
	debug  bool

	watchdog time.Duration
	watches  []vcpuWatch // nil without a watchdog

	start    time.Time
	tids     []atomic.Int32
	trace    []vcpuTrace // debug mode only
	stopping atomic.Bool
	stopOnce sync.Once
	result   Result
	ran      bool

	// pause is Pause's state (pause.go).
	pause pauseState
}

// New builds the machine: memory, interrupt controllers, vCPUs in their boot
// state, the loaded kernel, and the PCI functions of the devices.
func New(cfg Config) (m *Machine, err error) {
	if cfg.CPUs < 1 || cfg.CPUs > MaxCPUs {
		return nil, fmt.Errorf("%d vCPUs: between 1 and %d supported", cfg.CPUs, MaxCPUs)
	}
	if cfg.Watchdog < 0 {
		return nil, fmt.Errorf("watchdog bound %v: must be positive (or 0: off)", cfg.Watchdog)
	}
	m = &Machine{diag: cfg.Diag, debug: cfg.Debug, bus: newPCIBus(), cmos: newCMOS(), pm: &pmRegs{},
		start: time.Now(), watchdog: cfg.Watchdog}
	if m.diag == nil {
		m.diag = os.Stderr
	}
	// The returns below set m to nil; keep the half-built machine to undo.
	built := m
	defer func() {
		if err != nil {
			built.Close()
		}
	}()
	if err = m.createVM(cfg.CPUs); err != nil {
		return nil, err
	}
	m.router = newIRQRouter(m.vm)
	if m.ram, err = newGuestRAM(cfg.MemSize); err != nil {
		return nil, err
	}
	if err = m.ram.register(m.vm); err != nil {
		return nil, err
	}
	m.serial = newSerial(writerOrDiscard(cfg.Output), func(level bool) {
		// An IRQ line error means the VM is gone; nothing to tell the guest.
		_ = m.vm.IRQLine(irqCOM1, level)
	})
	m.serial.lineHook = cfg.ConsoleLine

	tscDeadline := m.sys.CheckExtension(kvm.CapTSCDeadlineTimer) > 0
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	if err = m.createVCPUs(cfg.CPUs, supported, tscDeadline); err != nil {
		return nil, err
	}

	mem := m.ram.mem
	entry, err := loadKernel(mem, m.ram.layout, cfg.Kernel, cfg.Initrd, cfg.Cmdline)
	if err != nil {
		return nil, err
	}
	if err = writeBootTables(mem); err != nil {
		return nil, err
	}
	if err = setupBootCPU(m.vcpus[0], entry); err != nil {
		return nil, err
	}

	slots, err := m.attachDevices(cfg.Devices)
	if err != nil {
		return nil, err
	}
	sig, feat := cpuLeaf1(cpuidFor(supported, 0, cfg.CPUs, tscDeadline))
	if err = writeFirmwareTables(mem, m.ram.layout, mpConfig{cpus: cfg.CPUs, cpuSig: sig, cpuFeature: feat, pciSlots: slots}); err != nil {
		return nil, err
	}
	if m.cons, err = newConsole(cfg.Console); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return m, nil
}

// createVM opens KVM, checks that it has what the machine needs for cpus
// vCPUs, and creates the VM with its TSS, identity map, in-kernel IRQ chip
// and PIT.
func (m *Machine) createVM(cpus int) (err error) {
	if m.sys, err = kvm.Open(); err != nil {
		return err
	}
	for _, c := range []kvm.Cap{kvm.CapIRQChip, kvm.CapUserMemory, kvm.CapPIT2, kvm.CapIRQRouting,
		kvm.CapIRQFD, kvm.CapIOEventFD, kvm.CapImmediateExit, kvm.CapExtCPUID} {
		if m.sys.CheckExtension(c) <= 0 {
			return fmt.Errorf("host KVM lacks capability %d", c)
		}
	}
	if max := m.sys.CheckExtension(kvm.CapMaxVCPUs); max > 0 && cpus > max {
		return fmt.Errorf("%d vCPUs: host KVM allows at most %d", cpus, max)
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return err
	}
	if err = m.vm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err = m.vm.SetIdentityMapAddr(identityAddr); err != nil {
		return err
	}
	if err = m.vm.CreateIRQChip(); err != nil {
		return err
	}
	if err = m.vm.CreatePIT2(); err != nil {
		return err
	}
	return nil
}

// createVCPUs creates n vCPUs with their CPUID tables and the per-vCPU
// state the run loop and the watchdog keep.
func (m *Machine) createVCPUs(n int, supported []kvm.CPUIDEntry, tscDeadline bool) error {
	for i := 0; i < n; i++ {
		c, err := m.vm.CreateVCPU(i)
		if err != nil {
			return err
		}
		m.vcpus = append(m.vcpus, c)
		if err := c.SetCPUID2(cpuidFor(supported, i, n, tscDeadline)); err != nil {
			return fmt.Errorf("vCPU %d: %w", i, err)
		}
	}
	m.tids = make([]atomic.Int32, n)
	m.trace = make([]vcpuTrace, n)
	if m.watchdog > 0 {
		m.watches = make([]vcpuWatch, n)
		for i := range m.watches {
			m.watches[i].det.bound = m.watchdog
		}
	}
	return nil
}

// attachDevices attaches the devices as PCI functions at devices 1, 2, ...
// in order and returns their slots.
func (m *Machine) attachDevices(devices []virtio.Device) ([]int, error) {
	var slots []int
	base := m.ram.layout.mmioBase()
	for i, d := range devices {
		slot := i + 1
		p := &slotPlatform{vm: m.vm, router: m.router, pin: pciPin(slot)}
		bar0 := base + uint64(i)*2*barWindow
		f, err := newVirtioFunction(d, p, m.ram.mem, bar0, bar0+barWindow)
		if err != nil {
			return nil, fmt.Errorf("virtio device %d (PCI slot %d): %w", i, slot, err)
		}
		if err := m.bus.attach(slot, f); err != nil {
			f.Close()
			return nil, err
		}
		slots = append(slots, slot)
	}
	return slots, nil
}

// barWindow is the guest address space reserved for each BAR of a function.
const barWindow = 1 << 24

// Memory returns guest memory.
func (m *Machine) Memory() *guestmem.Memory { return m.ram.mem }

// Run runs the machine until the guest ends it, Stop is called, or a vCPU
// fails; it returns how the machine ended. All vCPU goroutines, the console
// reader and the serial output writer have returned when Run returns (the
// queued serial output written). Run raises GOMAXPROCS to at least the
// number of vCPUs plus two, so that a vCPU thread coming back from KVM_RUN
// never waits for a scheduler slot.
func (m *Machine) Run() Result {
	if m.ran {
		return Result{Kind: ExitError, Status: 1, Err: errors.New("machine already ran")}
	}
	m.ran = true
	// Every vCPU goroutine is locked to its thread and spends its life in
	// KVM_RUN; when it comes back with an exit to handle it needs a P at
	// once. With no more Ps than vCPUs (a 2-CPU host running a 2-vCPU
	// guest) a returning vCPU can wait for the scheduler to hand it one,
	// and the guest waits with it, possibly inside an interrupt handler.
	// Spare Ps cost nothing while idle.
	if want := len(m.vcpus) + 2; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
	m.debugf("machine built; starting %d vCPUs (GOMAXPROCS %d)", len(m.vcpus), runtime.GOMAXPROCS(0))
	if m.debug {
		m.serial.first = func() { m.debugf("first serial output") }
	}
	m.serial.startOutput()
	m.cons.start(m.serial.Receive, func() { m.stop(Result{Kind: ExitQuit}) })
	watchDone := make(chan struct{})
	var watchWG sync.WaitGroup
	if m.watches != nil {
		watchWG.Add(1)
		go func() {
			defer watchWG.Done()
			m.watch(watchDone)
		}()
	}
	var wg sync.WaitGroup
	for i := range m.vcpus {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			m.runVCPU(i)
		}(i)
	}
	wg.Wait()
	// No kick may outlive Run: Close unmaps what kicks write to.
	close(watchDone)
	watchWG.Wait()
	// Every vCPU loop ends only after stop began; wait until it has kicked
	// them all, and make later Stop calls no-ops, so that Close cannot race
	// with a kick.
	m.stopOnce.Do(func() {})
	m.cons.stop()
	m.serial.stopOutput()
	m.debugf("all vCPUs stopped; serial: %s", m.serial.debugString())
	if m.debug {
		m.dumpVCPUs()
		g, err := guestResident(m.ram.mapping)
		m.debugf("VMM memory: %s; guest RAM resident %d kB (error %v)", memoryUsage(), g>>10, err)
	}
	return m.result
}

// Stop ends Run with ExitQuit (status 0) unless the machine already ended.
// It is safe to call from any goroutine, e.g. a signal handler.
func (m *Machine) Stop(status int) { m.stop(Result{Kind: ExitQuit, Status: status}) }

// stop records the first result and kicks every vCPU out of KVM_RUN. It
// reports whether r is the result (false: the machine was already
// stopping).
func (m *Machine) stop(r Result) (first bool) {
	m.stopOnce.Do(func() {
		first = true
		m.result = r
		// Before any immediate_exit: see serveWatchdog.
		m.stopping.Store(true)
		for i := range m.vcpus {
			m.kick(i)
		}
		m.pause.wakeAll()
	})
	return first
}

// kick makes vCPU i leave KVM_RUN (or not enter it) with ErrInterrupted.
func (m *Machine) kick(i int) {
	m.vcpus[i].SetImmediateExit(true)
	if tid := m.tids[i].Load(); tid != 0 {
		// SIGURG is the Go runtime's own preemption signal, so its
		// handler is harmless; its arrival makes KVM_RUN return EINTR.
		_ = unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// runVCPU is the loop of one vCPU on its own locked OS thread.
func (m *Machine) runVCPU(i int) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := m.vcpus[i]
	m.tids[i].Store(int32(unix.Gettid()))
	defer m.tids[i].Store(0)
	for !m.stopping.Load() {
		if m.debug {
			m.trace[i].entered.Store(time.Now().UnixNano())
		}
		reason, err := c.Run()
		if m.debug {
			m.trace[i].exited.Store(time.Now().UnixNano())
			m.trace[i].exits.Add(1)
		}
		if errors.Is(err, kvm.ErrInterrupted) {
			if m.watches != nil {
				m.serveWatchdog(i, c)
			}
			m.waitWhilePaused(i, c)
			continue
		}
		if err != nil {
			m.stop(Result{Kind: ExitError, Status: 1, Err: err})
			return
		}
		if m.watches != nil {
			m.watches[i].exits.Add(1)
		}
		if err := m.handleExit(c, reason); err != nil {
			m.stop(Result{Kind: ExitError, Status: 1, Err: err})
			return
		}
	}
}

func (m *Machine) handleExit(c *kvm.VCPU, reason kvm.ExitReason) error {
	switch reason {
	case kvm.ExitIO:
		io, err := c.IO()
		if err != nil {
			return err
		}
		for i := 0; i < io.Count; i++ {
			d := io.Data[i*io.Size : (i+1)*io.Size]
			if io.Out {
				m.portOut(c, io.Port, d)
			} else {
				m.portIn(io.Port, d)
			}
		}
		return nil
	case kvm.ExitMMIO:
		e := c.MMIO()
		if !m.bus.mmio(e.Addr, e.Data, e.Write) && !e.Write {
			fill(e.Data, 0xff)
		}
		return nil
	case kvm.ExitShutdown:
		// A triple fault. Linux reboots through the keyboard controller
		// (reboot=k, flushvm's default) or the FADT's reset register, so
		// a triple fault is a crash, or a reboot=t the user asked for.
		event := "triple fault (KVM_EXIT_SHUTDOWN)"
		if !m.serial.printed() {
			event += " before the guest's first console byte"
		}
		m.guestFailed(c, protocol.ExitGuestCrash, event, resetStateNote(c))
		return nil
	case kvm.ExitSystemEvent:
		switch ev := c.SystemEvent(); ev {
		case kvm.SystemEventCrash:
			m.guestFailed(c, protocol.ExitGuestCrash, "crash system event (KVM_SYSTEM_EVENT_CRASH)", "")
		case kvm.SystemEventShutdown:
			m.debugf("vCPU %d: system event %d: power off", c.ID(), ev)
			m.stop(Result{Kind: ExitPowerOff})
		default:
			m.debugf("vCPU %d: system event %d: reboot", c.ID(), ev)
			m.stop(Result{Kind: ExitReboot})
		}
		return nil
	case kvm.ExitHLT:
		// Only without an in-kernel LAPIC; treat a halted CPU as idle.
		return nil
	default:
		return m.fatalExit(c, reason)
	}
}

// portOut handles vCPU c's OUT of len(data) bytes. It runs on c's thread.
func (m *Machine) portOut(c *kvm.VCPU, port uint16, data []byte) {
	switch {
	case port >= portCOM1 && port < portCOM1+8:
		m.serial.Out(port-portCOM1, data[0])
	case port == portDebugExit:
		if len(data) == 1 {
			m.debugf("debug exit port: status %d", data[0])
			m.stop(Result{Kind: ExitDebugPort, Status: int(data[0])})
		}
	case port == portPvpanic:
		if pvpanicPanic(data) {
			m.guestFailed(c, protocol.ExitGuestCrash, protocol.KernelPanicEvent, "")
		}
	case port == portKbdStatus:
		if data[0] == kbdResetCommand {
			m.debugf("keyboard controller reset: reboot")
			m.stop(Result{Kind: ExitReboot})
		}
	case port == portResetCtl && len(data) == 1:
		// Reset control register: bit 2 starts the reset.
		if data[0]&0x4 != 0 {
			m.debugf("reset control register (0xcf9) reset: reboot")
			m.stop(Result{Kind: ExitReboot})
		}
	case port >= portPCIAddress && port < portPCIData+4:
		m.bus.ioOut(port, data)
	case port == portCMOSIndex || port == portCMOSData:
		m.cmos.Out(port, data[0])
	case m.pm.inRange(port):
		if m.pm.Out(port, data) {
			m.debugf("ACPI PM1a_CNT: sleep type S5: power off")
			m.stop(Result{Kind: ExitPowerOff})
		}
	}
}

// portIn handles a guest IN of len(data) bytes.
func (m *Machine) portIn(port uint16, data []byte) {
	switch {
	case port >= portCOM1 && port < portCOM1+8:
		fill(data, 0)
		data[0] = m.serial.In(port - portCOM1)
	case port == portKbdStatus:
		// There is no keyboard controller, only its reset line. Status
		// "output full, input empty" makes Linux's i8042 probe give up at
		// once (its flush never drains) while the reboot path, which waits
		// for "input empty", writes the reset command without delay.
		fill(data, 0)
		data[0] = kbdStatusOBF
	case port == portKbdData:
		fill(data, 0)
	case port == portPvpanic:
		pvpanicIn(data)
	case port >= portPCIAddress && port < portPCIData+4 && !(port == portResetCtl && len(data) == 1):
		m.bus.ioIn(port, data)
	case port == portCMOSIndex || port == portCMOSData:
		fill(data, 0xff)
		data[0] = m.cmos.In(port)
	case m.pm.inRange(port):
		m.pm.In(port, data)
	default:
		fill(data, 0xff)
	}
}

// Close releases everything: devices, vCPUs, memory, VM and /dev/kvm. Run
// must have returned.
func (m *Machine) Close() error {
	var errs []error
	if m.cons != nil && !m.ran {
		m.cons.stop()
	}
	if m.bus != nil {
		errs = append(errs, m.bus.close())
	}
	for _, c := range m.vcpus {
		errs = append(errs, c.Close())
	}
	m.vcpus = nil
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
		m.vm = nil
	}
	if m.ram != nil {
		errs = append(errs, m.ram.close())
		m.ram = nil
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
		m.sys = nil
	}
	return errors.Join(errs...)
}

func (m *Machine) debugf(format string, a ...any) {
	if m.debug {
		fmt.Fprintf(m.diag, "flushvm: [%.3f s] "+format+"\n", append([]any{time.Since(m.start).Seconds()}, a...)...)
	}
}

// vcpuTrace records when a vCPU last entered and left KVM_RUN (debug mode).
type vcpuTrace struct {
	entered, exited, exits atomic.Int64
}
