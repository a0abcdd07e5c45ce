//! Files of the default templates: a minimal root with a few standard
//! services, so that calls into the default qubes do something useful.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::model::{System, VmClass};
use crate::qubefs::{QubeFiles, make_skeleton};
use crate::store::StateDir;

/// `qubes.VMShell`: runs the shell commands it reads on stdin.
const VMSHELL: &str = "#!/bin/sh\nexec /bin/sh\n";

/// `qubes.GetDate`: prints the date.
const GETDATE: &str = "#!/bin/sh\ndate -u +%Y-%m-%dT%H:%M:%S%z\n";

/// Creates every qube's directories and populates the templates' roots.
pub fn populate_templates(dir: &StateDir, sys: &System) -> anyhow::Result<()> {
    let files = QubeFiles::new(dir.qubes_dir());
    files.reconcile(sys)?;
    for q in &sys.qubes {
        if q.class != VmClass::TemplateVM {
            continue;
        }
        let root = files.root(&q.name);
        make_skeleton(&root)?;
        for (name, body) in [("qubes.VMShell", VMSHELL), ("qubes.GetDate", GETDATE)] {
            let p = root.join("etc/qubes-rpc").join(name);
            fs::write(&p, body)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        }
        fs::write(
            root.join("etc/os-release"),
            format!("NAME=\"Simulated {}\"\nID=qpm-sim\n", q.name),
        )?;
    }
    Ok(())
}
