//! Routes for a routing daemon to announce (`announce_table`): each
//! tunnel's prefixes, in a table of their own, while the tunnel is fresh
//! here — heard within its silence_timeout, its link pointing at the
//! client. Brokers behind one anycast address each see only the clients
//! whose heartbeats the router hashes to them, so each announces just
//! those, and a client that moves to another broker is announced there and
//! withdrawn here when it falls silent.

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{info, warn};

use super::{Broker, Mode, decide};
use crate::addr::Prefix;

/// The routes' protocol (`ip route show table N proto 250`): what a
/// routing daemon's filter selects, and what a restart removes again.
pub const ROUTE_PROTOCOL: u8 = 250;

impl Broker {
    /// Announces tunnel `i`'s prefixes if `fresh`, withdraws them if not,
    /// when that changes.
    pub(super) async fn announce(&mut self, i: usize, fresh: bool) {
        let Some(table) = self.config.announce_table else { return };
        let t = &self.table.tunnels[i];
        if t.announced == fresh {
            return;
        }
        let index = match &self.mode {
            Mode::Shared(shared) => shared.device.index,
            Mode::PerLink => t.link.index,
        };
        let (name, prefixes) = (t.config.name.clone(), t.prefixes.clone());
        let changed = if fresh {
            add(&self.handle, table, index, &prefixes).await
        } else {
            remove(&self.handle, table, index, &prefixes).await
        };
        match changed {
            Ok(()) => {
                let list = prefixes.iter().map(Prefix::to_string).collect::<Vec<_>>().join(", ");
                let how = if fresh { "announced" } else { "withdrawn" };
                info!("tunnel {name}: {list} {how} (table {table})");
                self.table.tunnels[i].announced = fresh;
            }
            Err(e) => warn!("tunnel {name}: {e:#}"),
        }
    }

    /// At start and after a reload: the table holds exactly the fresh
    /// tunnels' routes. Earlier runs' and stopped tunnels' go; the routes
    /// that stay are never taken out meanwhile (a routing daemon would
    /// withdraw and announce them again).
    pub(super) async fn announce_all(&mut self) {
        let Some(table) = self.config.announce_table else { return };
        let fresh: Vec<bool> = (0..self.table.tunnels.len()).map(|i| self.is_fresh(i)).collect();
        let keep: Vec<Prefix> = self
            .table
            .tunnels
            .iter()
            .zip(&fresh)
            .filter(|(_, fresh)| **fresh)
            .flat_map(|(t, _)| t.prefixes.iter().copied())
            .collect();
        if let Err(e) = remove_others(&self.handle, table, &keep).await {
            warn!("{e:#}");
        }
        for (i, fresh) in fresh.into_iter().enumerate() {
            // What stays is added again (a replace): its link may be new.
            self.table.tunnels[i].announced = !fresh;
            self.announce(i, fresh).await;
        }
    }

    /// Heard within its silence_timeout, and its link (per-link mode)
    /// pointing at that endpoint.
    fn is_fresh(&self, i: usize) -> bool {
        let t = &self.table.tunnels[i];
        let Some(recorded) = self.endpoint(t.config.record_id) else { return false };
        let Some(source) = decide::known_endpoint(&recorded) else { return false };
        let timeout = t.config.silence.map_or(0, |s| s.timeout_ns);
        let silent = decide::silent_for(Some(recorded.last_seen_ns), t.since_ns, crate::now_ns(), timeout);
        let reaches = match &self.mode {
            Mode::Shared(_) => true,
            Mode::PerLink => decide::may_ack(Some(t.link.endpoint()), source),
        };
        silent.is_none() && reaches && !t.silent
    }
}

fn route(table: u32, index: u32, p: &Prefix) -> Result<RouteMessage> {
    Ok(RouteMessageBuilder::<std::net::IpAddr>::new()
        .destination_prefix(p.addr, p.len)
        .with_context(|| format!("no route for {p}"))?
        .output_interface(index)
        .scope(RouteScope::Link)
        .table_id(table)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build())
}

async fn add(handle: &Handle, table: u32, index: u32, prefixes: &[Prefix]) -> Result<()> {
    for p in prefixes {
        let message = route(table, index, p)?;
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot add the route of {p} to table {table}"))?;
    }
    Ok(())
}

async fn remove(handle: &Handle, table: u32, index: u32, prefixes: &[Prefix]) -> Result<()> {
    for p in prefixes {
        match handle.route().del(route(table, index, p)?).execute().await {
            Ok(()) => {}
            // Gone already (by hand, or with its link): what was wanted.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -crate::os::sys::NO_SUCH_PROCESS => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove the route of {p} from table {table}")),
        }
    }
    Ok(())
}

/// Removes every route of [`ROUTE_PROTOCOL`] in `table` but those to `keep`.
async fn remove_others(handle: &Handle, table: u32, keep: &[Prefix]) -> Result<()> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut filter = RouteMessageBuilder::<std::net::IpAddr>::new().table_id(table).build();
        filter.header.address_family = family;
        let mut routes = handle.route().get(filter).execute();
        let mut ours = Vec::new();
        while let Some(r) =
            routes.try_next().await.with_context(|| format!("cannot list the routes of table {table}"))?
        {
            if r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                && table_of(&r) == table
                && destination(&r).is_none_or(|d| !keep.contains(&d))
            {
                ours.push(r);
            }
        }
        for r in ours {
            handle.route().del(r).execute().await.with_context(|| format!("cannot clear table {table}"))?;
        }
    }
    Ok(())
}

/// The route's destination prefix.
fn destination(r: &RouteMessage) -> Option<Prefix> {
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(std::net::IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(std::net::IpAddr::V6(*a)),
        _ => None,
    })?;
    Some(Prefix { addr, len: r.header.destination_prefix_length })
}

fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(r.header.table))
}
