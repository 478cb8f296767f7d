package protocol

// `flushvm crashtest` contracts: its exit statuses and its --report schema,
// which batch systems and `flushvm-harness crashtest-table` read.

// Exit statuses of `flushvm crashtest` beyond ExitOK and ExitUsage.
const (
	// CrashtestViolations: at least one cut lost acknowledged data or
	// left a file system its checker does not accept.
	CrashtestViolations = 1
	// CrashtestFailed: boots failed, so the campaign could not check every
	// cut (and found no violation in those it checked).
	CrashtestFailed = 3
)

// StatsSchema is the version of the --stats document's schema
// (protocol/schema/stats.schema.json).
const StatsSchema = 1

// CrashtestExitStatuses is the table of `flushvm crashtest`'s exit
// statuses: the one table its --help prints and the README shows (a test
// keeps the README's copy equal).
var CrashtestExitStatuses = []ExitStatusRow{
	{"passed: every planned cut was checked and none lost acknowledged data or left a file system its checker rejects", "0"},
	{"violations: at least one cut lost acknowledged data or left a damaged file system", "1"},
	{"usage error (one line on stderr), found before anything runs", "2"},
	{"incomplete: no violation, but not every planned cut was checked (boots failed, or no usable KVM)", "3"},
}

// CrashtestSchema is the version of the CrashtestReport schema; it grows
// when a field changes meaning (new fields alone do not bump it).
const CrashtestSchema = 3

// The verdicts of a crashtest report (CrashtestReport.Status).
const (
	// CrashtestPassed: every cut the shard planned was checked and none
	// violated durability.
	CrashtestPassed = "passed"
	// CrashtestViolated: at least one cut violated durability.
	CrashtestViolated = "violations"
	// CrashtestIncomplete: no violation among the cuts checked, but not
	// every planned cut was checked (boots failed, or the campaign could
	// not start: no usable KVM, a failed format or calibration boot).
	CrashtestIncomplete = "incomplete"
)

// CrashtestReport is `flushvm crashtest --report`: the campaign's
// configuration, its calibration run, every cut and their sum. Shards of one
// campaign (same seed and cuts, different --shard) add up.
type CrashtestReport struct {
	// Schema is CrashtestSchema; FlushvmVersion the binary that ran it
	// (protocol.Version).
	Schema         int    `json:"schema"`
	FlushvmVersion string `json:"flushvm_version"`
	// Status is the verdict: CrashtestPassed, CrashtestViolated or
	// CrashtestIncomplete. Only CrashtestPassed proves anything.
	Status string `json:"status"`
	// Mode is CrashtestSystematic or CrashtestRandom.
	Mode     string `json:"mode"`
	Workload string `json:"workload"`
	// FS is the file system under test (FileSystems).
	FS          string               `json:"fs"`
	Records     int                  `json:"records"`
	Cache       string               `json:"cache"`
	Policy      string               `json:"policy"`
	Seed        uint64               `json:"seed"`
	Cuts        int                  `json:"cuts"`
	Shard       string               `json:"shard"`
	DiskSize    int64                `json:"disk_size"`
	Kernel      string               `json:"kernel"`
	Initrd      string               `json:"initrd"`
	Calibration CrashtestCalibration `json:"calibration"`
	Results     []CrashtestCut       `json:"results"`
	// Record, Coverage and States are the systematic mode's: the record
	// boot, the state space and the states the campaign judged. A run
	// that resumes a campaign (the same --dir) reports the campaign so
	// far: States and Summary count the states earlier runs judged too,
	// and Summary.Seconds their time; Coverage.Checked is this run's.
	Record   *CrashtestRecord   `json:"record,omitempty"`
	Coverage *CrashtestCoverage `json:"coverage,omitempty"`
	States   []CrashtestState   `json:"states,omitempty"`
	Summary  CrashtestTotals    `json:"summary"`
}

// FileSystem is the report's file system: FS, or ext4 for reports
// written before --fs.
func (r *CrashtestReport) FileSystem() string {
	if r.FS == "" {
		return FSExt4
	}
	return r.FS
}

// The modes of a campaign (CrashtestReport.Mode).
const (
	// CrashtestSystematic: record once, explore the crash states of the
	// write log, check them in batches.
	CrashtestSystematic = "systematic"
	// CrashtestRandom: a workload boot per cut, the power cut at a seeded
	// random point, a checker boot per cut.
	CrashtestRandom = "random"
)

// CrashtestRecord is the systematic mode's record boot.
type CrashtestRecord struct {
	// Log is the write log (the states' source); Base the image it
	// started from.
	Log  string `json:"log"`
	Base string `json:"base"`
	// Entries, Writes, Flushes count the log; Acks its acknowledgements.
	Entries int `json:"entries"`
	Writes  int `json:"writes"`
	Flushes int `json:"flushes"`
	Acks    int `json:"acks"`
	// Windows is the number of windows between flushes; MaxWindow the
	// most writes in one.
	Windows   int     `json:"windows"`
	MaxWindow int     `json:"max_window"`
	Seconds   float64 `json:"seconds"`
	// Reused is set when the recording of an earlier run in --dir was
	// used (a resumed campaign).
	Reused bool `json:"reused"`
}

// CrashtestCoverage says how much of the state space a campaign covered.
type CrashtestCoverage struct {
	// K is --k: windows of at most K writes get every subset.
	K int `json:"k"`
	// Space is the number of states in the space (every subset of every
	// window, and the torn states): approximate when huge.
	Space float64 `json:"space"`
	// Generated states, of which Distinct have distinct images
	// (Deduplicated = Generated - Distinct).
	Generated    int `json:"generated"`
	Distinct     int `json:"distinct"`
	Deduplicated int `json:"deduplicated"`
	// OtherShards are distinct states other shards own; Explored those
	// this shard checked before (the --dir's explored-state file);
	// Checked those this run checked; Skipped those left for later
	// (--max-states, --budget, an interrupted run).
	OtherShards int `json:"other_shards"`
	Explored    int `json:"explored_before"`
	Checked     int `json:"checked"`
	Skipped     int `json:"skipped"`
	// Exhausted is set when no state of this shard is left unchecked.
	Exhausted bool `json:"exhausted"`
}

// CrashtestCheck is the verdict of one checked crashed image.
type CrashtestCheck struct {
	// Acked counts the acknowledged records (rename: the last
	// acknowledged version) the image must keep.
	Acked int `json:"acked"`
	// CheckStatus is the checker's exit status; MountFailed says the
	// crashed file system did not mount; FsckStatus is the file system check's status
	// (-1: not reported).
	CheckStatus int  `json:"check_status"`
	MountFailed bool `json:"mount_failed"`
	FsckStatus  int  `json:"fsck_status"`
	// LostAcked counts acknowledged records missing or damaged; Extra
	// counts unacknowledged records that survived.
	LostAcked int `json:"lost_acked"`
	Extra     int `json:"extra"`
	// Violation: acknowledged data lost, or a file system fsck rejects.
	Violation bool   `json:"violation"`
	Reason    string `json:"reason,omitempty"`
	// Error says why the image could not be checked.
	Error string `json:"error,omitempty"`
}

// CrashtestState is one crash state a systematic campaign checked.
type CrashtestState struct {
	// ID names the state in the record's log (see `flushvm crashtest
	// --help`); Index is its number among the distinct states.
	ID    string `json:"id"`
	Index int    `json:"index"`
	// Kind is subset, prefix or torn; Window the log window.
	Kind   string `json:"kind"`
	Window int    `json:"window"`
	// Hash is the image's content hash (equal images, equal hashes).
	Hash string `json:"hash"`
	CrashtestCheck
	// CheckerDeaths counts checker boots that died while checking it.
	CheckerDeaths int `json:"checker_deaths"`
	// Repro rebuilds the image and checks it again.
	Repro string `json:"repro"`
}

// CrashtestTotals sums a campaign's cuts.
type CrashtestTotals struct {
	// Planned counts the cuts this shard owns; Checked those it ran and
	// judged (a power cut or an early end, then a checker verdict).
	Planned    int `json:"planned"`
	Checked    int `json:"checked"`
	Cuts       int `json:"cuts"`
	PowerCuts  int `json:"power_cuts"`
	NoCut      int `json:"ended_before_cut"`
	Errors     int `json:"errors"`
	Acked      int `json:"acked"`
	LostAcked  int `json:"lost_acked"`
	FsckErrors int `json:"fsck_errors"`
	// MountFailures counts crashed file systems that did not mount.
	MountFailures int `json:"mount_failures"`
	// GuestCrashes counts boots retried because the guest crashed or hung.
	GuestCrashes  int     `json:"guest_crashes"`
	Violations    int     `json:"violations"`
	Seconds       float64 `json:"seconds"`
	CutsPerMinute float64 `json:"cuts_per_minute"`
	// FirstFailure is the first cut with a violation (random mode).
	FirstFailure *CrashtestCut `json:"first_failure,omitempty"`
	// StatesPerMinute is the systematic mode's rate of checked states
	// (over the campaign's whole time, record boot included).
	StatesPerMinute float64 `json:"states_per_minute"`
	// FirstViolation is the first violating state (systematic mode).
	FirstViolation *CrashtestState `json:"first_violation,omitempty"`
}

// CrashtestCut is one cut in a crashtest report.
type CrashtestCut struct {
	// Cut is the cut's number in the campaign; Seed = campaign seed + Cut
	// drew its cut point and its policy's choices.
	Cut  int    `json:"cut"`
	Seed uint64 `json:"seed"`
	// At is the cut point (a --power-cut trigger).
	At string `json:"at"`
	// PowerCut is false when the workload ended before reaching At.
	PowerCut       bool `json:"power_cut"`
	WorkloadStatus int  `json:"workload_status"`
	// Unstable, Kept, Torn and Lost are the power-cut model's report:
	// writes not covered by a completed flush and their fates.
	Unstable int `json:"unstable_writes"`
	Kept     int `json:"kept_writes"`
	Torn     int `json:"torn_writes"`
	Lost     int `json:"lost_writes"`
	CrashtestCheck
	// GuestCrashes counts this cut's boots retried because the guest
	// crashed or hung (not the disk's doing).
	GuestCrashes int     `json:"guest_crashes"`
	Seconds      float64 `json:"seconds"`
	// Repro reproduces this cut; Image is its crashed image (kept when
	// it failed and --dir was given).
	Repro string `json:"repro"`
	Image string `json:"image,omitempty"`
}

// CrashtestCalibration is what a whole, uncut workload run sends to the
// disk; the campaign draws its cut points from it.
type CrashtestCalibration struct {
	// Writes counts writes, discards and write-zeroes (what writes=N
	// counts); Flushes the flushes that reached the disk (flushes=N).
	Writes  uint64  `json:"writes"`
	Flushes uint64  `json:"flushes"`
	Acks    int     `json:"acks"`
	Seconds float64 `json:"seconds"`
	// GuestCrashes counts boots retried because the guest crashed or
	// hung.
	GuestCrashes int `json:"guest_crashes"`
}
