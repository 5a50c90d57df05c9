//! Renders an `Assessment` as the `tuning check` table or as JSON (keys in tuning/PLAYBOOK.md).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::assess::{show_bytes, Assessment, Status, Transport, GATEWAY_RESERVED_FDS};
use crate::error::TuningError;

#[derive(Serialize)]
struct JsonReport<'a> {
    root: String,
    #[serde(flatten)]
    assessment: &'a Assessment,
}

pub fn write_json(
    assessment: &Assessment,
    root: &Path,
    out: &mut dyn Write,
) -> Result<(), TuningError> {
    let report = JsonReport {
        root: root.display().to_string(),
        assessment,
    };
    serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

pub fn write_table(
    assessment: &Assessment,
    root: &Path,
    out: &mut dyn Write,
) -> Result<(), TuningError> {
    let transport = match assessment.transport {
        Transport::Plaintext => "plaintext",
        Transport::Tls => "TLS",
    };
    writeln!(
        out,
        "target: {} idle {transport} connections; host root: {}",
        assessment.target_connections,
        root.display()
    )?;
    writeln!(
        out,
        "RLIMIT_* are this process's limits: run the check the way the gateway is started \
         (a systemd service takes them from its unit); the gateway raises its soft open-files \
         limit to the hard one."
    )?;
    writeln!(out)?;

    let header = ["setting", "current", "recommended", "status", "fix"];
    let rows: Vec<[String; 5]> = assessment
        .settings
        .iter()
        .map(|finding| {
            [
                finding.setting.to_string(),
                finding.current.clone().unwrap_or_else(|| "-".to_string()),
                finding.recommended.clone(),
                finding.status.label().to_string(),
                finding.fix.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;

    let verdict = if assessment.target_met {
        "met".to_string()
    } else {
        let failing = assessment
            .settings
            .iter()
            .filter(|finding| finding.status != Status::Ok)
            .count();
        format!("NOT met ({failing} setting(s) need attention)")
    };
    writeln!(
        out,
        "target of {} connections: {verdict}",
        assessment.target_connections
    )?;
    let capacity = &assessment.capacity;
    let memory = &capacity.memory;
    let mut cost = format!(
        "{} kernel + {} gateway",
        show_bytes(memory.kernel_bytes_per_connection),
        show_bytes(memory.gateway_bytes_per_connection)
    );
    if memory.conntrack_bytes_per_connection > 0 {
        cost.push_str(&format!(
            " + {} conntrack",
            show_bytes(memory.conntrack_bytes_per_connection)
        ));
    }
    let available = memory
        .available_bytes
        .map_or_else(|| "unknown".to_string(), show_bytes);
    writeln!(
        out,
        "memory: each idle connection costs {cost} = {}; {}% of MemAvailable ({available}) \
         is usable, the rest is headroom for socket buffers during fanout",
        show_bytes(memory.bytes_per_connection),
        memory.usable_percent
    )?;
    writeln!(
        out,
        "file descriptors: one per connection, plus {} the gateway keeps for itself \
         (32 + 8 per shard for 64 shards, 64 for API requests)",
        GATEWAY_RESERVED_FDS
    )?;
    let ceilings = capacity
        .ceilings
        .iter()
        .map(|ceiling| format!("{} {}", ceiling.limit, ceiling.connections))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(out, "ceilings: {ceilings}")?;
    // The capacity line comes last so scripts can take it with `tail -n 1`.
    match capacity.limited_by {
        Some(limit) => writeln!(
            out,
            "this host can hold about {} connections, limited by {limit}",
            capacity.connections
        )?,
        None => writeln!(
            out,
            "this host's capacity is unknown: none of its limits could be read"
        )?,
    }
    Ok(())
}
