// The fr catalogue: one module per area of the page.
import { actions } from './actions';
import { chat } from './chat';
import { common } from './common';
import { stats } from './stats';

export const fr = { common, chat, actions, stats };
