// The nl catalogue: one module per area of the page.
import { actions } from './actions';
import { chat } from './chat';
import { common } from './common';
import { stats } from './stats';

export const nl = { common, chat, actions, stats };
