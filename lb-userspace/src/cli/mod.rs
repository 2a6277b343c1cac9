//! The `lb` command line: its subcommands (`args`), run by `commands` (admin ones over the API
//! through `client`), with tables printed by `print`.

mod args;
mod client;
mod commands;
mod fleet;
mod geodns;
mod print;

pub use self::{
    args::{
        BackendAction, Cmd, FleetAction, FlowsAction, GeodnsAction, Opt, RealAction, Shell, SiteAction, StoreArgs, Target, VipAction,
        DEFAULT_INSTANCE,
    },
    commands::{admin, doctor},
};
