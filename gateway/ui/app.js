// The dashboard's router: `#/fleet`, `#/gpu/HOST/UUID[/RANGE]`, `#/pipeline`, `#/alerts`. Each
// view has show and hide, so only the visible one polls or holds a WebSocket.

import { onUnauthorized, saveToken, token } from './api.js';
import { alerts } from './alerts.js';
import { fleet } from './fleet.js';
import { gpuView } from './gpu.js';
import { pipeline } from './pipeline.js';

const views = { fleet, gpu: gpuView, pipeline, alerts };
let active = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const name = views[parts[0]] ? parts[0] : 'fleet';
  if (active) views[active].hide();
  for (const v of Object.keys(views)) document.getElementById(`view-${v}`).hidden = v !== name;
  document.querySelectorAll('nav a[data-view]').forEach((a) => {
    a.classList.toggle('on', a.dataset.view === name || (name === 'gpu' && a.dataset.view === 'fleet'));
  });
  active = name;
  if (name === 'gpu') gpuView.show(parts[1], parts[2], parts[3]);
  else views[name].show();
  document.body.dataset.view = name;
}

// The token dialog: opened by a 401, or by the header's button once a token is in use.
const dialog = document.getElementById('token-dialog');
const input = document.getElementById('token-input');
const tokenButton = document.getElementById('token-button');
onUnauthorized((reason) => {
  if (dialog.open) return;
  document.getElementById('token-reason').textContent = token()
    ? `The gateway refused the saved token: ${reason}.`
    : 'The gateway runs with AUTH_MODE=token.';
  input.value = '';
  dialog.showModal();
});
dialog.addEventListener('close', () => {
  if (dialog.returnValue === 'save' && input.value.trim()) saveToken(input.value.trim());
  if (dialog.returnValue === 'forget') saveToken('');
  tokenButton.hidden = !token();
  route();
});
tokenButton.hidden = !token();
tokenButton.addEventListener('click', () => {
  document.getElementById('token-reason').textContent = 'Replace or forget the token this browser uses.';
  dialog.showModal();
});

window.addEventListener('hashchange', route);
window.dashboard = { fleet };
route();
