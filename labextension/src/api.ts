/**
 * The server extension's API (jhproxy_routes/singleuser): `GET jhproxy-routes/ports` lists
 * this server's ports, `POST` changes a port's visibility or the port token, answered with
 * the same object, fresh.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One port: listening or not, allowed by the hub's admin or not. */
export interface IPort {
  port: number;
  listening: boolean;
  addresses?: string[];
  loopback_only?: boolean;
  relayed?: boolean;
  pid?: number;
  process?: string;
  command?: string;
  allowed?: boolean;
  /** the allow-list's key that covers it: "8501", or a range "8000-8099" */
  spec?: string | null;
  name?: string;
  url?: string | null;
  access?: string | null;
  effective_access?: string | null;
  /** who gets in, in words (the hub may give a list of words) */
  admits?: string | string[] | null;
  allowed_access?: string[] | null;
  protocol?: string;
}

/** The answer of `GET jhproxy-routes/ports`. */
export interface IPorts {
  hub: boolean;
  user?: string;
  server?: string;
  hub_error?: string | null;
  /** "random" (or the hub's "token"), "allow_all" or "disabled" */
  mode?: string | null;
  token?: string | null;
  token_expires?: string | null;
  allowed_modes?: string[] | null;
  relay?: boolean;
  ports: IPort[];
}

/** What a POST changes: a port's visibility (by its spec), or the token. */
export interface IChange {
  ports?: { [spec: string]: string };
  mode?: string;
  expires_in?: number;
}

const PATH = 'jhproxy-routes/ports';

export async function requestPorts(change?: IChange): Promise<IPorts> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, PATH);
  const init: RequestInit = change
    ? { method: 'POST', body: JSON.stringify(change) }
    : { method: 'GET' };
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!response.ok) {
    throw new Error(
      data.message || `${response.status} ${response.statusText}`
    );
  }
  return data as IPorts;
}

/** Whether a port may be reached through the hub (allowed, and the server routed). */
export function reachable(port: IPort): boolean {
  return Boolean(port.allowed && port.url);
}

/** The label of a port: the admin's name for it, else the process that listens. */
export function label(port: IPort): string {
  return port.name || port.process || '';
}

/** The hub's words for who gets in, as its ports page says them. */
const ADMITS: { [who: string]: string } = {
  owner: 'you',
  token: 'token holders',
  users: 'hub users',
  shared: 'those the server is shared with',
  anyone: 'anyone'
};

/** Who gets in, as one line of text. */
export function admitsText(port: IPort): string {
  const admits = port.admits;
  if (Array.isArray(admits)) {
    return admits.length
      ? admits
          .map(who => ADMITS[who] || who.replace(/^group:/, 'group '))
          .join(', ')
      : 'nobody';
  }
  return admits || '';
}

/** The choices of visibility, in the words of the hub's ports page. */
export const VISIBILITY: [string, string][] = [
  ['server', 'Follows the token setting'],
  ['owner', 'Only me'],
  ['users', 'Hub users, or the token'],
  ['shared', "Whoever it's shared with, or the token"],
  ['public', 'Public: anyone'],
  ['disabled', 'Off: nobody']
];

/** The visibility choices offered for a port: the admin's list where there is one. */
export function choices(port: IPort): [string, string][] {
  const words = new Map(VISIBILITY);
  const allowed = port.allowed_access;
  const values = allowed
    ? allowed.filter(value => value !== 'group:*')
    : VISIBILITY.map(([value]) => value);
  if (port.access && !values.includes(port.access)) {
    values.unshift(port.access); // what it is now, even if no longer offered
  }
  return values.map(value => [
    value,
    words.get(value) ||
      (value.startsWith('group:')
        ? `Group ${value.slice(6)}, or the token`
        : value)
  ]);
}
