/**
 * jhproxy-routes in JupyterLab 4 and Notebook 7: the Ports side panel and a notification
 * when an allowed port starts listening. Nothing at all outside a JupyterHub: no hub user
 * in the page, or a server extension that answers `"hub": false`.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Clipboard, Notification } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { IPort } from './api';
import { PortsModel } from './model';
import { PortsPanel } from './panel';

const PLUGIN_ID = '@jhproxy-routes/labextension:plugin';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The Ports panel of jhproxy-routes, and its notifications.',
  autoStart: true,
  optional: [ISettingRegistry],
  activate: (app: JupyterFrontEnd, registry: ISettingRegistry | null) => {
    if (!PageConfig.getOption('hubUser')) {
      return; // not a JupyterHub's server
    }
    let settings: ISettingRegistry.ISettings | null = null;
    let notify = true;
    // the user's setting first: the first answer may already announce ports
    const loaded = registry
      ? registry
          .load(PLUGIN_ID)
          .then(values => {
            settings = values;
            const read = () => {
              notify = values.get('notify').composite !== false;
            };
            read();
            values.changed.connect(read);
          })
          .catch(reason =>
            console.warn('jhproxy-routes: settings not loaded', reason)
          )
      : Promise.resolve();

    const model = new PortsModel(PageConfig.getBaseUrl());
    let panel: PortsPanel | null = null;
    model.changed.connect(() => {
      const data = model.data;
      if (!data) {
        return;
      }
      if (!data.hub) {
        model.dispose(); // a server outside a hub: no panel, no notifications
        return;
      }
      if (!panel) {
        panel = new PortsPanel(model);
        app.shell.add(panel, 'left', { rank: 250 });
      }
    });

    const announce = (port: IPort) => {
      const url = port.url;
      const actions: Notification.IAction[] = [];
      if (url) {
        actions.push(
          {
            label: 'Open',
            caption: `Open ${url} in a new tab`,
            callback: () => window.open(url, '_blank', 'noopener')
          },
          {
            label: 'Copy link',
            caption: url,
            callback: () => Clipboard.copyToSystem(url)
          }
        );
      }
      actions.push(
        {
          label: 'Change visibility',
          caption: 'Who may see it: the Ports panel',
          callback: () => {
            if (panel) {
              app.shell.activateById(panel.id);
              panel.reveal(port.port);
            }
          }
        },
        {
          label: "Don't show again",
          caption: 'No more of these notifications (Settings: Ports)',
          displayType: 'link',
          callback: () => {
            notify = false;
            void settings?.set('notify', false);
          }
        }
      );
      const what = port.process || port.name || 'An app';
      Notification.info(`${what} is listening on ${port.port}`, {
        autoClose: 15000,
        actions
      });
    };
    model.started.connect((_, ports) => {
      if (notify) {
        ports.forEach(announce);
      }
    });
    void loaded.then(() => model.start());
  }
};

export default plugin;
