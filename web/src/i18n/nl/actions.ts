import type { Translation } from '..';
import type { actions as reference } from '../fr/actions';

export const actions: Translation<typeof reference> = {};
