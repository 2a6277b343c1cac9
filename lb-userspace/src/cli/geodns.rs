//! `lb geodns`: the agent beside gdnsd (`run`), gdnsd's config snippets (`render`), and the
//! state now (`status`), all from the fleet store.

use anyhow::{Context as _, Result};

use super::{
    args::{GeodnsAction, StoreArgs},
    fleet::access,
};
use crate::geodns::{
    agent::{self, read_view, Files},
    gdnsd::{self, Placement},
};

pub fn run(action: GeodnsAction, args: &StoreArgs) -> Result<()> {
    let access = access(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        if let GeodnsAction::Run { state_file, json_file } = action {
            return agent::run(access, Files { state: state_file, json: json_file }).await;
        }
        let mut client = access.connect().await?;
        let (view, _) = read_view(&mut client, &access).await?;
        let (revision, doc) = view.doc.as_ref().context("no valid fleet document in the store (`lb fleet apply FILE` writes one)")?;
        match action {
            GeodnsAction::Run { .. } => unreachable!("handled above"),
            GeodnsAction::Render { out, state_file, geoip2_db, nets } => {
                let placement = match (&geoip2_db, &nets) {
                    (Some(db), _) => Placement::Coordinates { geoip2_db: db },
                    (None, Some(nets)) => Placement::Networks { nets_file: nets },
                    (None, None) => unreachable!("clap requires one"),
                };
                let rendered = gdnsd::render(doc, &state_file, &placement)?;
                std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
                for (name, text) in [
                    ("anycast-lb.service_types", &rendered.service_types),
                    ("anycast-lb.plugins", &rendered.plugins),
                    ("anycast-lb.records", &rendered.records),
                ] {
                    crate::durable::write(&out.join(name), text.as_bytes()).with_context(|| format!("writing {name}"))?;
                }
                println!("rendered from fleet revision {revision} into {}. In gdnsd's config:", out.display());
                println!("  service_types => {{ $include{{{}}} }}", out.join("anycast-lb.service_types").display());
                println!("  plugins => {{ $include{{{}}} }}", out.join("anycast-lb.plugins").display());
                println!("and in the zone (or $INCLUDE {}):", out.join("anycast-lb.records").display());
                print!("{}", rendered.records);
                Ok(())
            }
            GeodnsAction::Status { json } => {
                let answers = view.answers();
                if json {
                    println!("{}", serde_json::to_string_pretty(&gdnsd::JsonState::new(doc, *revision, true, &answers))?);
                    return Ok(());
                }
                println!("fleet revision {revision}");
                println!("{:<16} {:<12} {:<5} {:>8}  {:<40} WHY", "VIP", "SITE", "DNS", "CAPACITY", "ADDRESSES");
                for a in &answers {
                    let addrs: Vec<String> = a.addresses.iter().map(ToString::to_string).collect();
                    let state = if a.up { "UP" } else { "DOWN" };
                    println!("{:<16} {:<12} {state:<5} {:>7.0}%  {:<40} {}", a.vip, a.site, a.capacity * 100.0, addrs.join(","), a.why);
                }
                Ok(())
            }
        }
    })
}
