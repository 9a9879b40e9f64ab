package cli

import (
	"encoding/json"
	"fmt"

	"github.com/dmctl/dmctl/internal/atomicfile"
)

// writeReadyFile writes v as JSON atomically, so a watcher never sees a
// partial file. Commands with --ready-file use it once they are listening
// or connected.
func writeReadyFile(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}
