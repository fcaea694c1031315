// SSRF guard for webhook URLs: a destination must resolve to public unicast addresses only — no loopback,
// private (RFC 1918, unique local), link-local (which holds the cloud metadata endpoints 169.254.169.254 and
// fd00:ec2::254), carrier-grade NAT, multicast or reserved ranges — unless WEBHOOK_ALLOW_PRIVATE=true.
// The check runs when a webhook is created and again in the socket's DNS lookup of every delivery, so a name
// that later resolves to an internal address (DNS rebinding) is refused at connect time.
import dns, { type LookupAddress, type LookupOptions } from 'node:dns';
import ipaddr from 'ipaddr.js';

export class RefusedDestinationError extends Error {
  override name = 'RefusedDestinationError';
}

/** null when `address` is a public unicast address, else the name of its range (e.g. "loopback"). */
export function forbiddenRange(address: string): string | null {
  let parsed = ipaddr.parse(address);
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) parsed = (parsed as ipaddr.IPv6).toIPv4Address();
  const range = parsed.range();
  return range === 'unicast' ? null : range;
}

function refusal(hostname: string, addresses: LookupAddress[]): RefusedDestinationError | null {
  for (const { address } of addresses) {
    const range = forbiddenRange(address);
    if (range !== null) {
      return new RefusedDestinationError(
        `${hostname} resolves to ${address}, a ${range} address; webhooks are delivered to public addresses only`,
      );
    }
  }
  return null;
}

/** Resolves the URL's host and refuses internal destinations; the URL must be http(s) without credentials. */
export async function checkDestination(url: URL, allowPrivate: boolean): Promise<void> {
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new RefusedDestinationError(`the URL must be http or https, not ${url.protocol}`);
  if (url.username || url.password) throw new RefusedDestinationError('the URL must not carry a user name or password');
  const hostname = url.hostname.replace(/^\[|\]$/g, '');
  let addresses: LookupAddress[];
  try {
    addresses = await dns.promises.lookup(hostname, { all: true, verbatim: true });
  } catch {
    throw new RefusedDestinationError(`${hostname} does not resolve; use a host name with a public DNS record`);
  }
  if (!allowPrivate) {
    const refused = refusal(hostname, addresses);
    if (refused) throw refused;
  }
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/** A `lookup` for http.request that applies the same rule at connect time. */
export function guardedLookup(allowPrivate: boolean) {
  return (hostname: string, options: LookupOptions, callback: LookupCallback): void => {
    dns.lookup(hostname, { ...options, all: true, verbatim: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const refused = allowPrivate ? null : refusal(hostname, addresses);
      if (refused) return callback(refused, []);
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first) return callback(new RefusedDestinationError(`${hostname} resolves to no address`), []);
      return callback(null, first.address, first.family);
    });
  };
}
