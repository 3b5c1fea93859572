package bench

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel stop cmd when the benchmark dies without
// stopping it.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
