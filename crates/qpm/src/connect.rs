//! Reaching dom0: picks the Admin API transport (qubesd socket in dom0,
//! qrexec-client-vm in a qube, the simulator elsewhere) and starts the
//! simulator on demand.
