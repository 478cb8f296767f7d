// Package atomicfile writes output documents (--stats, crashtest and replay
// reports) so that a reader never sees half of one: the document goes to a
// temporary file beside the target, which is then renamed over it.
package atomicfile

import (
	"encoding/json"
	"os"
)

// WriteJSON writes v, indented, with a final newline, to path atomically.
// Errors are the encoder's or the file system's, unwrapped, for the caller
// to name its flag; on failure the temporary file is removed and path is
// left as it was.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
