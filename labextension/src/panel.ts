/**
 * The Ports side panel: the port token, then one row per port of this server (its process,
 * URL with Copy and Open, who may see it, who gets in). Rows are kept between answers, so a
 * select or button keeps its focus while the panel polls.
 */
import { Clipboard } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { admitsText, choices, IPort, IPorts, label, reachable } from './api';
import { PortsModel } from './model';
import portsSvg from '../style/icons/ports.svg';

export const portsIcon = new LabIcon({
  name: 'jhproxy-routes:ports',
  svgstr: portsSvg
});

const MODES: { [mode: string]: string } = {
  random: 'A port token is needed where a port follows the token setting.',
  token: 'A port token is needed where a port follows the token setting.',
  allow_all:
    'No token needed: anyone may call ports that follow the token setting.',
  disabled:
    'Port token off: ports that follow the token setting admit only you.'
};

export class PortsPanel extends Widget {
  constructor(model: PortsModel) {
    super();
    this.model = model;
    this.id = 'jhproxy-routes-ports';
    this.addClass('jp-jhpr-Panel');
    this.title.icon = portsIcon;
    this.title.caption = 'Ports';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Ports');

    const heading = element('h2', 'jp-jhpr-heading', 'Ports');
    this._error = element('div', 'jp-jhpr-error');
    this._error.setAttribute('role', 'alert');
    this._token = element('section', 'jp-jhpr-token');
    this._token.setAttribute('aria-label', 'Port token');
    this._list = element('ul', 'jp-jhpr-list');
    this._list.setAttribute('aria-label', 'Ports of this server');
    this._empty = element(
      'p',
      'jp-jhpr-empty',
      'No port listens yet. Start an app, e.g. in a terminal.'
    );
    this.node.append(
      heading,
      this._error,
      this._token,
      this._empty,
      this._list
    );
    this._buildToken();
    model.changed.connect(this._render, this);
    this._render();
  }

  readonly model: PortsModel;

  /** Show the row of ``port`` and put the focus on its visibility. */
  reveal(port: number): void {
    const row = this._rows.get(port);
    if (!row) {
      return;
    }
    row.node.scrollIntoView({ block: 'nearest' });
    row.node.classList.add('jp-jhpr-highlight');
    window.setTimeout(
      () => row.node.classList.remove('jp-jhpr-highlight'),
      2000
    );
    (row.select.disabled ? row.node : row.select).focus();
  }

  protected onAfterShow(msg: Message): void {
    this.model.shown = true;
  }

  protected onAfterHide(msg: Message): void {
    this.model.shown = false;
  }

  private _buildToken(): void {
    const mode = element('p', 'jp-jhpr-mode');
    const field = document.createElement('input');
    field.className = 'jp-mod-styled jp-jhpr-token-value';
    field.readOnly = true;
    field.setAttribute('aria-label', 'Port token');
    const copy = button('Copy', 'Copy the port token', () =>
      Clipboard.copyToSystem(field.value)
    );
    const fresh = button('New token', 'Make a new port token', () =>
      this._call({ mode: 'random' })
    );
    const expires = element('p', 'jp-jhpr-expires');
    const row = element('div', 'jp-jhpr-token-row');
    row.append(field, copy);
    this._token.append(
      element('h3', 'jp-jhpr-subheading', 'Port token'),
      mode,
      row,
      expires,
      fresh
    );
    this._tokenParts = { mode, field, row, copy, fresh, expires };
  }

  private _render(): void {
    const data = this.model.data;
    const error = this.model.error || (data && data.hub_error) || '';
    this._error.textContent = error;
    this._error.hidden = !error;
    if (!data) {
      return;
    }
    this._renderToken(data);
    const seen = new Set<number>();
    let previous: HTMLElement | null = null;
    for (const port of data.ports) {
      seen.add(port.port);
      let row = this._rows.get(port.port);
      if (!row) {
        row = new Row(port.port, this);
        this._rows.set(port.port, row);
      }
      row.update(port);
      const next: ChildNode | null = previous
        ? previous.nextSibling
        : this._list.firstChild;
      if (next !== row.node) {
        this._list.insertBefore(row.node, next);
      }
      previous = row.node;
    }
    for (const [port, row] of this._rows) {
      if (!seen.has(port)) {
        row.node.remove();
        this._rows.delete(port);
      }
    }
    this._empty.hidden = data.ports.length > 0;
  }

  private _renderToken(data: IPorts): void {
    const parts = this._tokenParts!;
    const mode = data.mode || '';
    parts.mode.textContent = MODES[mode] || '';
    const hasToken = Boolean(data.token);
    parts.row.hidden = !hasToken;
    if (parts.field.value !== (data.token || '')) {
      parts.field.value = data.token || '';
    }
    const unreadable = !hasToken && (mode === 'token' || mode === 'random');
    parts.expires.textContent = hasToken
      ? data.token_expires
        ? `Expires ${new Date(data.token_expires).toLocaleString()}`
        : 'Does not expire'
      : unreadable
        ? "This token can't be shown again (the hub keeps only its hash): make a new one to see it."
        : '';
    const modes = data.allowed_modes;
    parts.fresh.hidden = Boolean(modes && !modes.includes('random'));
  }

  /** A change through the API; its failure is shown above the list. */
  async _call(change: Parameters<PortsModel['change']>[0]): Promise<void> {
    try {
      await this.model.change(change);
    } catch (error) {
      this._error.textContent = (error as Error).message;
      this._error.hidden = false;
    }
  }

  private _error: HTMLElement;
  private _token: HTMLElement;
  private _tokenParts: {
    mode: HTMLElement;
    field: HTMLInputElement;
    row: HTMLElement;
    copy: HTMLButtonElement;
    fresh: HTMLButtonElement;
    expires: HTMLElement;
  } | null = null;
  private _list: HTMLElement;
  private _empty: HTMLElement;
  private _rows = new Map<number, Row>();
}

/** One port's row. */
class Row {
  constructor(port: number, panel: PortsPanel) {
    this.node = element('li', 'jp-jhpr-port');
    this.node.dataset.port = String(port);
    this.node.tabIndex = -1;
    const head = element('div', 'jp-jhpr-head');
    head.append(
      element('span', 'jp-jhpr-number', String(port)),
      this._label,
      this._protocol,
      this._state
    );
    this._url.target = '_blank';
    this._url.rel = 'noopener noreferrer';
    this._url.className = 'jp-jhpr-link';
    const copy = button('Copy', `Copy the URL of port ${port}`, () =>
      Clipboard.copyToSystem(this._url.href)
    );
    const open = button('Open', `Open port ${port} in a new tab`, () =>
      window.open(this._url.href, '_blank', 'noopener')
    );
    const actions = element('div', 'jp-jhpr-actions');
    actions.append(copy, open);
    this._urlRow.append(this._url, actions);
    const visibility = element(
      'label',
      'jp-jhpr-visibility',
      'Who may see it '
    );
    this.select.className = 'jp-mod-styled';
    this.select.setAttribute('aria-label', `Who may see port ${port}`);
    this.select.addEventListener('change', async () => {
      const spec = this._port?.spec;
      if (!spec) {
        return;
      }
      this.select.disabled = true;
      await panel._call({ ports: { [spec]: this.select.value } });
      this.select.disabled = false;
    });
    visibility.append(this.select);
    this._settings.append(visibility, this._admits);
    this.node.append(
      head,
      this._note,
      this._command,
      this._urlRow,
      this._settings
    );
  }

  update(port: IPort): void {
    this._port = port;
    const name = label(port);
    this._label.textContent = name;
    this._label.title = port.command || '';
    this._command.textContent = port.command || '';
    this._command.title = port.command || '';
    this._command.hidden = !port.command;
    this._state.textContent = port.listening ? 'listening' : 'not listening';
    const tls = port.protocol === 'https';
    this._protocol.hidden = !tls;
    this._protocol.textContent = tls ? 'HTTPS' : '';
    this._protocol.title = tls
      ? 'The app serves TLS itself: the hub reaches it over HTTPS'
      : '';
    this.node.classList.toggle('jp-jhpr-listening', port.listening);
    this.node.classList.toggle('jp-jhpr-notallowed', !port.allowed);
    let note = '';
    if (!port.allowed) {
      note = "Not allowed by the hub's admin: not reachable through the hub.";
    } else if (!port.listening) {
      note = 'Nothing is listening on this port.';
    } else if (port.relayed) {
      note = "Listens on 127.0.0.1 only: relayed from the server's address.";
    }
    this._note.textContent = note;
    this._note.hidden = !note;
    const url = reachable(port) ? port.url! : '';
    this._urlRow.hidden = !url;
    if (url && this._url.getAttribute('href') !== url) {
      this._url.href = url;
      this._url.textContent = url;
    }
    this._settings.hidden = !port.allowed;
    if (port.allowed) {
      this._options(port);
      this._admits.textContent = admitsText(port)
        ? `Gets in: ${admitsText(port)}`
        : '';
    }
  }

  private _options(port: IPort): void {
    const offered = choices(port);
    const key = JSON.stringify(offered);
    if (key !== this._offered) {
      this._offered = key;
      this.select.replaceChildren(
        ...offered.map(([value, words]) => {
          const option = document.createElement('option');
          option.value = value;
          option.textContent = words;
          return option;
        })
      );
    }
    if (!this.select.disabled && document.activeElement !== this.select) {
      this.select.value = port.access || '';
    }
  }

  readonly node: HTMLElement;
  readonly select = document.createElement('select');
  private _port: IPort | null = null;
  private _offered = '';
  private _label = element('span', 'jp-jhpr-label');
  private _state = element('span', 'jp-jhpr-state');
  private _protocol = element('span', 'jp-jhpr-protocol');
  private _note = element('p', 'jp-jhpr-note');
  private _command = element('code', 'jp-jhpr-command');
  private _urlRow = element('div', 'jp-jhpr-url');
  private _url = document.createElement('a');
  private _settings = element('div', 'jp-jhpr-settings');
  private _admits = element('p', 'jp-jhpr-admits');
}

function element(tag: string, className: string, text = ''): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

function button(
  text: string,
  aria: string,
  onClick: () => unknown
): HTMLButtonElement {
  const node = document.createElement('button');
  node.type = 'button';
  node.className = 'jp-Button jp-mod-styled jp-mod-reject jp-jhpr-button';
  node.textContent = text;
  node.setAttribute('aria-label', aria);
  node.title = aria;
  node.addEventListener('click', () => void onClick());
  return node;
}
