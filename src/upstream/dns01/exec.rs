//! The exec provider: an operator's program with lego's exec-provider
//! contract, `PROGRAM present FQDN VALUE` and `PROGRAM cleanup FQDN VALUE`,
//! FQDN with its trailing dot. Exit status 0 is success; otherwise its
//! output is the error the client sees.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How much of the program's output an error quotes.
const OUTPUT_QUOTED: usize = 600;

/// Runs `program action fqdn value`, killed after `timeout`.
pub(crate) async fn run(
    program: &Path,
    action: &str,
    fqdn: &str,
    value: &str,
    timeout: Duration,
) -> Result<(), String> {
    let child = Command::new(program)
        .arg(action)
        .arg(fqdn)
        .arg(value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("{} {action}: {e}", program.display())),
        Err(_) => {
            return Err(format!(
                "{} {action} {fqdn} did not finish within {timeout:?}",
                program.display()
            ));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    if text.len() > OUTPUT_QUOTED {
        let cut = (0..=OUTPUT_QUOTED)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    Err(format!(
        "{} {action} {fqdn} exited with {}: {text}",
        program.display(),
        out.status
    ))
}
