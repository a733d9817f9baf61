/**
 * The ports of this server, polled from the server extension: every 2 s while the panel is
 * shown, every 3 s behind it (for the notifications); `started` names the allowed ports that
 * began listening since the last answer (once per port while it keeps listening, remembered
 * for the browser tab's session).
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { IChange, IPort, IPorts, requestPorts } from './api';

const SHOWN = 2000;
const BEHIND = 3000;

export class PortsModel {
  constructor(key: string) {
    this._key = `jhproxy-routes:announced:${key}`;
    this._announced = this._remembered();
    this._poll = new Poll({
      auto: false,
      factory: () => this._tick(),
      frequency: { interval: BEHIND, backoff: true, max: 60 * 1000 },
      name: 'jhproxy-routes:ports',
      standby: 'when-hidden'
    });
  }

  /** The last answer of the server (null before the first). */
  get data(): IPorts | null {
    return this._data;
  }

  /** The last failure, in words ("" after a good answer). */
  get error(): string {
    return this._error;
  }

  /** Emitted after every answer (or failure). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted with the allowed ports that started listening. */
  get started(): ISignal<this, IPort[]> {
    return this._started;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /** Start polling (at once). */
  start(): void {
    void this._poll.start();
  }

  /** The panel is shown (poll every 2 s, now) or hidden (every 3 s). */
  set shown(shown: boolean) {
    this._poll.frequency = {
      interval: shown ? SHOWN : BEHIND,
      backoff: true,
      max: 60 * 1000
    };
    if (shown) {
      void this._poll.refresh();
    }
  }

  /** Change a port's visibility or the token; the answer is the new state. */
  async change(change: IChange): Promise<void> {
    this._update(await requestPorts(change));
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    let data: IPorts;
    try {
      data = await requestPorts();
    } catch (error) {
      this._error = (error as Error).message || String(error);
      this._changed.emit();
      throw error; // the poll backs off
    }
    this._update(data);
  }

  private _update(data: IPorts): void {
    this._data = data;
    this._error = '';
    if (data.hub) {
      this._announce(data.ports);
    }
    this._changed.emit();
  }

  private _announce(ports: IPort[]): void {
    const listening = ports.filter(port => port.allowed && port.listening);
    const fresh = listening.filter(port => !this._announced.has(port.port));
    // a port that stopped is forgotten: when it listens again, it is announced again
    this._announced = new Set(listening.map(port => port.port));
    try {
      window.sessionStorage.setItem(
        this._key,
        JSON.stringify([...this._announced])
      );
    } catch {
      // no session storage: remembered for this page only
    }
    if (fresh.length) {
      this._started.emit(fresh);
    }
  }

  private _remembered(): Set<number> {
    try {
      return new Set(
        JSON.parse(window.sessionStorage.getItem(this._key) || '[]')
      );
    } catch {
      return new Set();
    }
  }

  private _key: string;
  private _announced: Set<number>;
  private _data: IPorts | null = null;
  private _error = '';
  private _poll: Poll;
  private _changed = new Signal<this, void>(this);
  private _started = new Signal<this, IPort[]>(this);
}
